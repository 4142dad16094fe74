"""Warehouse tests, each run against a DuckDB file and the machine's PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from snapshot_factory import (
    at,
    small_snapshot,
    with_dq_row,
    with_names,
    with_root_figures,
    without_contest,
    write,
)
from synthetic import warehouse_snapshot

from etl.warehouse import (
    SnapshotError,
    WarehouseURLError,
    load_snapshot,
    migrate,
    previous_published,
    seat_allocation,
)
from etl.warehouse.backends import connect

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE_KEYS = {
    "snapshots": "snapshot_id",
    "snapshot_contests": "snapshot_id, contest_id",
    "divisions": "election_id, contest_id, division_id, valid_from_seq",
    "turnout": "election_id, contest_id, division_id, valid_from_seq",
    "results": "election_id, contest_id, division_id, line_no, valid_from_seq",
    "dq_results": "snapshot_id, row_no",
    "seat_allocations": "snapshot_id, contest_id, line_no",
}
# The versioned tables hold a row per version; these views show a snapshot's rows.
BY_SNAPSHOT = {table: f"{table}_by_snapshot" for table in ("divisions", "turnout", "results")}






def query(url: str, sql: str, params=()) -> list[tuple]:
    with connect(url) as db:
        return db.query(sql, params)


def count(url: str, table: str, snapshot_id: str | None = None) -> int:
    """Rows of a table, or the rows snapshot `snapshot_id` holds in it."""
    if snapshot_id is None:
        return query(url, f"SELECT count(*) FROM {table}")[0][0]
    source = BY_SNAPSHOT.get(table, table)
    return query(url, f"SELECT count(*) FROM {source} WHERE snapshot_id = ?", [snapshot_id])[0][0]


def test_migrations_are_idempotent(warehouse_url):
    assert migrate(warehouse_url) == (1, 2)
    assert migrate(warehouse_url) == ()
    assert query(warehouse_url, "SELECT version FROM schema_migrations ORDER BY version") == [
        (1,), (2,)]
    for table in [*TABLE_KEYS, *BY_SNAPSHOT.values(), "latest_results", "latest_turnout",
                  "results_history", "seat_allocation"]:
        assert count(warehouse_url, table) == 0


def test_duckdb_creates_the_parent_directories(tmp_path):
    migrate(f"duckdb:///{tmp_path}/a/b/c.duckdb")
    assert (tmp_path / "a" / "b" / "c.duckdb").is_file()


def test_unsupported_url_is_refused():
    with pytest.raises(WarehouseURLError, match="unsupported warehouse URL"):
        migrate("sqlite:///x.db")


def test_loading_twice_leaves_the_same_rows(warehouse_url, tmp_path):
    snapshot = small_snapshot("s1")
    directory = write(snapshot, tmp_path)
    first = load_snapshot(warehouse_url, directory)
    assert first.is_new and first.all_published
    assert first.rows["results"] == len(snapshot.results) > 0
    again = load_snapshot(warehouse_url, directory)
    assert not again.is_new
    assert set(again.rows.values()) == {0}
    assert again.statuses == first.statuses
    replaced = load_snapshot(warehouse_url, directory, replace=True)
    assert not replaced.is_new and replaced.rows == first.rows
    for table, key in TABLE_KEYS.items():
        total = count(warehouse_url, table)
        distinct = query(warehouse_url, f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM {table}) k")
        assert total == distinct[0][0] > 0, table
    assert count(warehouse_url, "results") == len(snapshot.results)
    assert count(warehouse_url, "divisions") == len(snapshot.divisions)
    assert count(warehouse_url, "dq_results") == len(snapshot.dq_results)


def test_frames_round_trip_with_their_types(warehouse_url, tmp_path):
    snapshot = small_snapshot("s1")
    load_snapshot(warehouse_url, write(snapshot, tmp_path))
    turnout, results = previous_published(warehouse_url, "jk2021")
    expected = snapshot.results.sort_values(
        ["contest_id", "division_id"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(results, expected)
    expected_turnout = snapshot.turnout.sort_values(
        ["contest_id", "division_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(turnout, expected_turnout)
    stored = query(warehouse_url, "SELECT portal_updated_at, fetched_at, pages_fetched FROM snapshots")
    assert stored[0][0] == at(16)
    assert stored[0][1] == datetime_utc("2021-11-28T16:00:40+00:00")
    assert stored[0][2] == snapshot.meta["pages_fetched"]


def datetime_utc(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text)


def test_line_no_numbers_rows_within_a_division(warehouse_url, tmp_path):
    snapshot = small_snapshot("s1")
    # The duplicates incident: one candidate twice in one table. Quarantined, but kept.
    results = snapshot.results
    okrug_root = results[(results["contest_id"] == "okrug-1") & (results["division_id"] == "okrug-1")]
    doubled = pd.concat([results, okrug_root.iloc[[0]]], ignore_index=True)
    snapshot = with_dq_row(replace(snapshot, results=doubled), "unique_choice", "okrug-1")
    summary = load_snapshot(warehouse_url, write(snapshot, tmp_path))
    assert summary.statuses["okrug-1"] == "quarantined"
    rows = query(warehouse_url, "SELECT line_no, choice_position, choice_name, votes FROM results"
                 " WHERE contest_id = 'okrug-1' AND division_id = 'okrug-1' ORDER BY line_no")
    assert [row[0] for row in rows] == [0, 1, 2, 3]
    assert rows[3][1:] == rows[0][1:]


def test_quarantine_never_leaks_and_the_previous_snapshot_stays_current(warehouse_url, tmp_path):
    good = small_snapshot("s1", at(16), counted=0.5)
    load_snapshot(warehouse_url, write(good, tmp_path))
    bad = with_dq_row(small_snapshot("s2", at(17), counted=1.0, seed=1),
                      "pct_sum_le_100", "list", message="parties sum to 143.27%")
    summary = load_snapshot(warehouse_url, write(bad, tmp_path))
    assert summary.quarantined == ("list",)
    assert summary.statuses["okrug-1"] == "published"
    reason = query(warehouse_url, "SELECT status, reason FROM snapshot_contests"
                   " WHERE snapshot_id = 's2' AND contest_id = 'list'")
    assert reason == [("quarantined", "critical checks failed: pct_sum_le_100 (1 row)")]
    # Kept for inspection …
    assert count(warehouse_url, "results", "s2") == len(bad.results)
    # … but the consumers still see s1 for the list and s2 for the constituencies.
    for view in ("latest_results", "latest_turnout", "seat_allocation"):
        latest = dict(query(warehouse_url, f"SELECT DISTINCT contest_id, snapshot_id FROM {view}"))
        assert latest == {"list": "s1", "okrug-1": "s2", "okrug-2": "s2", "okrug-3": "s2"}, view
    assert {row[0] for row in query(warehouse_url, "SELECT DISTINCT snapshot_id FROM results_history"
                                    " WHERE contest_id = 'list'")} == {"s1"}
    turnout, results = previous_published(warehouse_url, "jk2021", ["list"])
    assert set(results["snapshot_id"]) == set(turnout["snapshot_id"]) == {"s1"}
    assert len(results) == len(good.results[good.results["contest_id"] == "list"])


def test_a_snapshot_wide_critical_failure_quarantines_every_contest(warehouse_url, tmp_path):
    load_snapshot(warehouse_url, write(small_snapshot("s1", at(16)), tmp_path))
    bad = with_dq_row(small_snapshot("s2", at(17)), "snapshot_complete", None)
    summary = load_snapshot(warehouse_url, write(bad, tmp_path))
    assert set(summary.statuses.values()) == {"quarantined"}
    assert query(warehouse_url, "SELECT DISTINCT snapshot_id FROM latest_results") == [("s1",)]


def test_a_warning_does_not_quarantine(warehouse_url, tmp_path):
    snapshot = with_dq_row(small_snapshot("s1"), "pct_matches", "list", severity="warning")
    assert load_snapshot(warehouse_url, write(snapshot, tmp_path)).all_published


def test_failed_contest_is_recorded_with_its_reason(warehouse_url, tmp_path):
    load_snapshot(warehouse_url, write(small_snapshot("s1", at(16)), tmp_path))
    failure = {"url": "http://127.0.0.1:8765/ru/results/jk2021/okrug-2/",
               "reason": "HTTP 503 after 4 retries", "status": 503, "contest_id": "okrug-2"}
    partial = without_contest(small_snapshot("s2", at(17)), "okrug-2", [failure])
    summary = load_snapshot(warehouse_url, write(partial, tmp_path))
    assert summary.failed == ("okrug-2",)
    (reason,) = query(warehouse_url, "SELECT reason FROM snapshot_contests"
                      " WHERE snapshot_id = 's2' AND contest_id = 'okrug-2'")[0]
    assert "no root division" in reason and failure["url"] in reason and "503" in reason
    latest = dict(query(warehouse_url, "SELECT DISTINCT contest_id, snapshot_id FROM latest_results"))
    assert latest == {"list": "s2", "okrug-1": "s2", "okrug-2": "s1", "okrug-3": "s2"}


def test_history_across_snapshots(warehouse_url, tmp_path):
    timeline = [("t1", at(15, 30), 0.25), ("t2", at(16, 0), 0.5), ("t3", at(16, 30), 0.9)]
    snapshots = {sid: small_snapshot(sid, when, counted=share) for sid, when, share in timeline}
    # Loaded out of order: recency is the portal's time, not the load order.
    for sid in ("t3", "t1", "t2"):
        load_snapshot(warehouse_url, write(snapshots[sid], tmp_path))
    quarantined = with_dq_row(small_snapshot("t4", at(17), counted=1.0), "pct_sum_le_100", None)
    load_snapshot(warehouse_url, write(quarantined, tmp_path))

    national = query(warehouse_url, "SELECT snapshot_id, votes, ballots_cast, precincts_counted,"
                     " precincts_total FROM results_history WHERE contest_id = 'list'"
                     " AND parent_id IS NULL AND choice_position = 21"
                     " ORDER BY portal_updated_at")
    assert [row[0] for row in national] == ["t1", "t2", "t3"]
    votes = [row[1] for row in national]
    assert votes == sorted(votes) and votes[0] > 0
    assert [row[3] for row in national] == [10, 20, 36]
    assert {row[4] for row in national} == {40}
    for sid, *_ in timeline:
        root = snapshots[sid].results
        expected = root[(root["division_id"] == "0") & (root["choice_position"] == 21)]
        assert votes[int(sid[1]) - 1] == expected["votes"].item()

    levels = query(warehouse_url, "SELECT level, count(DISTINCT division_id) FROM results_history"
                   " WHERE contest_id = 'list' GROUP BY level ORDER BY level")
    assert levels == [("country", 1), ("region", 4)]  # the regions, no districts or precincts
    okrug = query(warehouse_url, "SELECT DISTINCT level FROM results_history"
                  " WHERE contest_id = 'okrug-1'")
    assert sorted(okrug) == [("constituency",), ("precinct",)]  # a constituency's children
    assert query(warehouse_url, "SELECT DISTINCT snapshot_id FROM latest_results") == [("t3",)]


def test_postgres_statistics_follow_the_loads_that_grow_a_table(postgres_database_url, tmp_path):
    # The planner's row estimates (pg_class.reltuples; -1: never analyzed) are brought up to
    # date by the load that grew a table by more than a tenth, not a minute later by
    # autovacuum: the views join the versioned tables on them.
    from snapshot_factory import postgres_schema_url

    url = postgres_schema_url(postgres_database_url)

    def estimates() -> dict[str, float]:
        return dict(query(url, "SELECT relname::text, reltuples FROM pg_class WHERE relname IN"
                               " ('results', 'turnout') AND relnamespace ="
                               " (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"))

    migrate(url)
    assert estimates() == {"results": -1, "turnout": -1}
    load_snapshot(url, write(small_snapshot("t1", at(15), counted=0.5), tmp_path))
    first = count(url, "results")
    assert first > 0 and estimates() == {"results": first, "turnout": count(url, "turnout")}

    # The same figures again: no new versions, statistics left as they were.
    load_snapshot(url, write(small_snapshot("t2", at(16), counted=0.5), tmp_path))
    assert count(url, "results") == first and estimates()["results"] == first
    with connect(url) as db:  # growth below a tenth is left to autovacuum
        assert db.refresh_statistics({"results": int(0.1 * first), "turnout": 0}) == []
        assert db.refresh_statistics({"results": int(0.1 * first) + 1}) == ["results"]

    # Every precinct counted: the versions grow by far more than a tenth.
    load_snapshot(url, write(small_snapshot("t3", at(17), counted=1.0), tmp_path))
    assert count(url, "results") > 1.1 * first
    assert estimates()["results"] == count(url, "results")


# FACTS.md: final shares of the six passing parties, preliminary shares of the rest.
FINAL_TOOK_PART = 1_281_622
FINAL_PCT = {21: 17.32, 9: 13.61, 8: 11.00, 3: 8.35, 2: 7.04, 5: 6.17}
OTHER_PCT = {1: 3.48, 4: 0.62, 6: 0.62, 7: 0.95, 10: 4.01, 11: 1.54, 12: 0.41, 13: 0.44,
             14: 3.21, 15: 0.46, 16: 0.96, 17: 2.48, 18: 4.46, 19: 0.46, 20: 0.71}
EXPECTED_SEATS = {21: 15, 9: 12, 8: 9, 3: 7, 2: 6, 5: 5}


def test_seat_allocation_of_the_final_shares(warehouse_url, tmp_path):
    shares = {**FINAL_PCT, **OTHER_PCT, None: 2.15}
    votes = {p: round(pct * FINAL_TOOK_PART / 100) for p, pct in shares.items()}
    final = with_root_figures(small_snapshot("final", at(18, day=15)), "list", votes,
                              FINAL_TOOK_PART)
    # okrug-1: against all first, the seat stays vacant; okrug-2: candidate 2 wins.
    final = with_root_figures(final, "okrug-1", {1: 100, 2: 90, None: 120}, 400)
    final = with_root_figures(final, "okrug-2", {1: 100, 2: 190, None: 20}, 400)
    load_snapshot(warehouse_url, write(final, tmp_path))

    rows = query(warehouse_url, "SELECT choice_position, seats, passed_threshold, pct, note"
                 " FROM seat_allocation WHERE contest_id = 'list' ORDER BY line_no")
    won = {row[0]: row[1] for row in rows if row[0] is not None}
    assert won == {p: EXPECTED_SEATS.get(p, 0) for p in range(1, 22)}
    assert sum(won.values()) == 54
    assert {row[0] for row in rows if row[2]} == set(FINAL_PCT)
    assert [row for row in rows if row[0] is None] == [
        (None, 0, None, pytest.approx(2.15, abs=0.001), "against all takes no seats")]
    okrug_1 = query(warehouse_url, "SELECT choice_position, seats, note FROM seat_allocation"
                    " WHERE contest_id = 'okrug-1' ORDER BY line_no")
    assert [row[1] for row in okrug_1] == [0, 0, 0]
    assert {row[2] for row in okrug_1} == {"vacant: against all has most votes"}
    okrug_2 = seat_allocation(warehouse_url, "jk2021", "okrug-2")
    assert [(r["choice_position"], r["seats"], r["method"]) for r in okrug_2] == [
        (1, 0, "single_mandate"), (2, 1, "single_mandate"), (None, 0, "single_mandate")]
    assert {r["snapshot_id"] for r in okrug_2} == {"final"}
    assert len(seat_allocation(warehouse_url, "jk2021")) == len(rows) + 3 * 3


def test_previous_published_is_empty_before_anything_is_published(warehouse_url, tmp_path):
    turnout, results = previous_published(warehouse_url, "jk2021", ["list"])
    assert turnout.empty and results.empty
    assert list(results.columns)[:4] == ["snapshot_id", "election_id", "contest_id", "division_id"]
    load_snapshot(warehouse_url, write(small_snapshot("s1"), tmp_path))
    turnout, results = previous_published(warehouse_url, "jk2021", ["okrug-3"])
    assert set(results["contest_id"]) == set(turnout["contest_id"]) == {"okrug-3"}
    assert previous_published(warehouse_url, "jk2021", [])[1].empty
    assert previous_published(warehouse_url, "other2030")[1].empty


HOSTILE = [
    "O'Brien \"the\" «Кыргыз» `x`",
    "'; DROP TABLE results; --",
    "\"); DELETE FROM snapshots; --",
    "<script>alert('x')</script> &amp; <b>",
    "Ата-Журт 🇰🇬 🗳️ Ү Ө Ң",
    "comma, semicolon; tab\there\nnew line\r\nand \\. and \\N",
    "\\.",
    "",
    "N" * 10_000,
]


def test_hostile_strings_are_stored_verbatim(warehouse_url, tmp_path):
    snapshot = with_names(small_snapshot("s1"), HOSTILE)
    load_snapshot(warehouse_url, write(snapshot, tmp_path))
    stored = query(warehouse_url, "SELECT choice_name FROM results ORDER BY contest_id, division_id,"
                   " line_no")
    expected = snapshot.results.sort_values(["contest_id", "division_id"], kind="stable")
    assert [row[0] for row in stored] == expected["choice_name"].tolist()
    assert {row[0] for row in query(warehouse_url, "SELECT name FROM divisions")} == set(HOSTILE)
    assert {row[0] for row in query(warehouse_url, "SELECT message FROM dq_results")} <= set(HOSTILE)
    assert {row[0] for row in query(warehouse_url, "SELECT choice_name FROM latest_results")} == set(
        HOSTILE)
    assert count(warehouse_url, "results") == len(snapshot.results)  # still there
    assert count(warehouse_url, "snapshots") == 1


def test_bad_snapshot_directories_are_refused_and_load_nothing(warehouse_url, tmp_path):
    migrate(warehouse_url)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    with pytest.raises(SnapshotError, match=r"snapshot\.json missing"):
        load_snapshot(warehouse_url, interrupted)
    snapshot = small_snapshot("s1")
    directory = write(snapshot, tmp_path)
    other = snapshot.results.assign(snapshot_id="someone-else")
    other.to_parquet(directory / "results.parquet", index=False)
    with pytest.raises(SnapshotError, match="the manifest says 's1'"):
        load_snapshot(warehouse_url, directory)
    (directory / "dq_results.parquet").unlink()
    with pytest.raises(SnapshotError, match=r"dq_results\.parquet is missing"):
        load_snapshot(warehouse_url, directory)
    assert count(warehouse_url, "snapshots") == 0


# The loader in a child process; with `hold_seconds` its commit is delayed (every row
# inserted, the transaction open) so the test can SIGKILL it there. The delay is a wrapper
# installed here, in the child: production code has no hook for it.
_LOADER = """
import logging, sys, time
from pathlib import Path
from etl.warehouse import backends, load_snapshot

hold = float(sys.argv[3])

def held(commit):
    def commit_after_a_while(self):
        if hold:
            logging.warning("holding the load transaction open for %.0fs", hold)
            time.sleep(hold)
        commit(self)
    return commit_after_a_while

for backend in (backends.DuckDBBackend, backends.PostgresBackend):
    backend.commit = held(backend.commit)
logging.basicConfig(level=getattr(logging, sys.argv[4]))
load_snapshot(sys.argv[1], Path(sys.argv[2]))
"""


def _start_loader(
    url: str, directory: Path, hold_seconds: float = 0, log_level: str = "INFO"
) -> subprocess.Popen:
    migrate(url)  # so that the child's first commit is the load's
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _LOADER, url, str(directory), str(hold_seconds), log_level],
        cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _assert_absent(url: str, snapshot_id: str) -> None:
    for table in TABLE_KEYS:
        assert count(url, table, snapshot_id) == 0, table


def test_sigkill_inside_the_transaction_leaves_nothing(warehouse_url, tmp_path):
    load_snapshot(warehouse_url, write(small_snapshot("s1", at(16)), tmp_path))
    big = warehouse_snapshot("big", portal_updated_at=at(17))
    loader = _start_loader(warehouse_url, write(big, tmp_path), hold_seconds=60)
    assert loader.stderr is not None
    for line in loader.stderr:  # wait until every row is inserted, the commit not sent
        if "holding the load transaction" in line:
            break
    else:
        pytest.fail(f"the loader ended without reaching the hold point (rc {loader.wait()})")
    loader.send_signal(signal.SIGKILL)
    assert loader.wait(timeout=30) == -signal.SIGKILL
    _assert_absent(warehouse_url, "big")
    assert query(warehouse_url, "SELECT DISTINCT snapshot_id FROM latest_results") == [("s1",)]
    # The warehouse still takes loads (no stale lock), and the same snapshot loads whole.
    summary = load_snapshot(warehouse_url, write(big, tmp_path))
    assert summary.is_new and count(warehouse_url, "results", "big") == len(big.results)


@pytest.mark.parametrize("after_table", ["divisions", "results", "seat_allocations"])
def test_sigkill_during_the_bulk_inserts_is_all_or_nothing(warehouse_url, tmp_path, after_table):
    big = warehouse_snapshot("big", portal_updated_at=at(17))
    directory = write(big, tmp_path)
    loader = _start_loader(warehouse_url, directory, log_level="DEBUG")
    assert loader.stderr is not None
    for line in loader.stderr:  # no hold: the loader runs on while the signal is sent
        if f"rows into {after_table}" in line:
            break
    loader.send_signal(signal.SIGKILL)
    loader.wait(timeout=30)
    expected = {"snapshots": 1, "divisions": len(big.divisions), "results": len(big.results),
                "turnout": len(big.turnout), "dq_results": len(big.dq_results),
                "snapshot_contests": 37, "seat_allocations": 130}
    # One statement, so one moment: a COMMIT the loader sent just before it was killed is
    # still carried out by the server, and counts taken one by one could straddle it.
    tables = list(expected)
    sql = "SELECT " + ", ".join(
        f"(SELECT count(*) FROM {BY_SNAPSHOT.get(t, t)} WHERE snapshot_id = ?)" for t in tables)
    found = dict(zip(tables, query(warehouse_url, sql, ["big"] * len(tables))[0], strict=True))
    assert found in ({table: 0 for table in expected}, expected)


def test_readme_example_queries_run(warehouse_url, tmp_path):
    load_snapshot(warehouse_url, write(small_snapshot("s1"), tmp_path))
    readme = (REPO_ROOT / "etl" / "warehouse" / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in readme.split("```sql\n")[1:]]
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 5
    answers = [query(warehouse_url, statement) for statement in statements]
    assert len(answers[0]) == 22  # 21 parties and against-all, national
    assert len(answers[1]) == 1 and answers[1][0][1] > 0  # one snapshot of party №21
    assert sum(row[4] for row in answers[2]) == 54  # every party-list seat is given
    as_of = answers[-1]  # "as of snapshot X": every party-list line of the snapshot
    assert len(as_of) == count(warehouse_url, "results_by_snapshot") - len(
        query(warehouse_url, "SELECT 1 FROM results WHERE contest_id <> 'list'")) > 0
