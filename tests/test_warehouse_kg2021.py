"""The warehouse on real pipeline output: the kg2021 replica scraped, validated and loaded.

Snapshots of the party list and three constituencies at three moments of the night:
`counting-4`, `formula-error` (percentages doubled: the gate quarantines the list) and
`final` (CEC resolution №836: 15/12/9/7/6/5 seats; against all wins okrug-3 and okrug-4).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.quality.gate import validate_snapshot
from etl.replica.server import ReplicaServer
from etl.scrape import scrape
from etl.warehouse import load_snapshot
from etl.warehouse.backends import connect

CONTESTS = ["list", "okrug-1", "okrug-3", "okrug-4"]
MOMENTS = ["counting-4", "formula-error", "final"]
EXPECTED_SEATS = {21: 15, 9: 12, 8: 9, 3: 7, 2: 6, 5: 5}


@pytest.fixture(scope="module")
def snapshot_dirs(tmp_path_factory) -> dict[str, Path]:
    """One scraped and validated snapshot directory per moment."""
    root = tmp_path_factory.mktemp("kg2021")
    dirs = {}
    with ReplicaServer("kg2021") as server:
        for moment in MOMENTS:
            server.goto(moment)
            out = root / moment
            scrape(server.base_url, "jk2021", out, contests=CONTESTS, archive_root=root / "raw")
            validate_snapshot(out, report_dir=root / "reports")
            dirs[moment] = out
    return dirs






def query(url: str, sql: str) -> list[tuple]:
    with connect(url) as db:
        return db.query(sql)


def test_final_snapshot_gives_the_cec_seats(warehouse_url, snapshot_dirs):
    summary = load_snapshot(warehouse_url, snapshot_dirs["final"])
    assert summary.all_published, summary.contests
    seats = dict(query(warehouse_url, "SELECT choice_position, seats FROM seat_allocation"
                                  " WHERE contest_id = 'list' AND NOT is_against_all"))
    assert seats == {p: EXPECTED_SEATS.get(p, 0) for p in range(1, 22)}
    vacant = query(warehouse_url, "SELECT DISTINCT contest_id FROM seat_allocation"
                              " WHERE note = 'vacant: against all has most votes'")
    assert sorted(vacant) == [("okrug-3",), ("okrug-4",)]
    assert query(warehouse_url, "SELECT sum(seats) FROM seat_allocation"
                            " WHERE contest_id = 'okrug-1'") == [(1,)]


def test_timeline_history_and_the_quarantined_formula_error(warehouse_url, snapshot_dirs):
    before = load_snapshot(warehouse_url, snapshot_dirs["counting-4"])
    assert before.all_published, before.contests
    error = load_snapshot(warehouse_url, snapshot_dirs["formula-error"])
    assert "list" in error.quarantined
    latest = dict(query(warehouse_url, "SELECT DISTINCT contest_id, snapshot_id FROM latest_results"))
    assert latest["list"] == before.snapshot_id  # the doubled percentages never show
    history = query(warehouse_url, "SELECT DISTINCT snapshot_id FROM results_history"
                               " WHERE contest_id = 'list'")
    assert history == [(before.snapshot_id,)]

    final = load_snapshot(warehouse_url, snapshot_dirs["final"])
    national = query(warehouse_url, "SELECT snapshot_id, votes, precincts_counted FROM results_history"
                                " WHERE contest_id = 'list' AND parent_id IS NULL"
                                " AND choice_position = 21 ORDER BY portal_updated_at")
    assert [row[0] for row in national] == [before.snapshot_id, final.snapshot_id]
    assert national[0][1] < national[1][1] and national[0][2] < national[1][2]
    assert set(dict(query(warehouse_url, "SELECT contest_id, snapshot_id FROM latest_turnout"))
               .values()) == {final.snapshot_id}
