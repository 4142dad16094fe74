"""Versioned storage answers exactly like a full copy per snapshot, over the whole kg2021 night.

The replica's 19 snapshots (counting, the doubled-percentage incident, the withdrawn data,
recounts, the annulment, the duplicate candidate, the final result) are scraped over real
HTTP, validated against the previous published snapshot and loaded, as `etl run` does. The
same snapshot directories then go into a full copy (schema version 1, every row of every
snapshot: today's semantics) and into the versioned schema, on both backends; every public
view and every snapshot's "as of" rows must be equal, after each load and at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from warehouse_reference import (
    answers,
    assert_same_answers,
    create_v1_schema,
    load_full_copy,
)

from etl.cycle import validate_stage
from etl.fetch import FetchError
from etl.parse import PortalMaintenance
from etl.replica import load_scenario
from etl.replica.server import ReplicaServer
from etl.scrape import scrape
from etl.warehouse import load_snapshot, migrate
from etl.warehouse.backends import connect

# Constituencies (a scrape of the party list, 2,500 precincts, takes too long for 19
# moments in a test; bench/storage.py replays every contest): okrug-3, where against-all
# wins, okrug-32, whose root lists a candidate twice (quarantined), and two more.
CONTESTS = ["okrug-1", "okrug-3", "okrug-17", "okrug-32"]
# Moments where the portal has no data: the run fails before a snapshot exists.
WITHDRAWN = {"withdrawn-maintenance", "withdrawn-503"}
# The night fixture (17 scrapes and gate runs) counts toward its first test's time: about
# 5 minutes on a busy 2-core machine, above the suite's default of 10 under heavy load.
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> list[Path]:
    """The whole night as snapshot directories, in the order the pipeline took them (17:
    the two withdrawn moments give none)."""
    root = tmp_path_factory.mktemp("night")
    pipeline = f"duckdb:///{root}/pipeline.duckdb"
    dirs = []
    with pytest.MonkeyPatch.context() as env, ReplicaServer("kg2021") as server:
        env.setenv("CEC_RETRIES", "0")  # the withdrawn-503 moment fails at once
        env.setenv("CEC_DATA_DIR", str(root / "data"))
        for snapshot in load_scenario("kg2021").snapshots:
            server.goto(snapshot.index)
            out = root / f"{snapshot.index:02d}-{snapshot.label}"
            try:
                scrape(server.base_url, "jk2021", out, contests=CONTESTS,
                       archive_root=root / "raw")
            except (PortalMaintenance, FetchError):
                assert snapshot.label in WITHDRAWN
                continue
            validate_stage(out, pipeline)
            load_snapshot(pipeline, out)
            dirs.append(out)
    assert len(dirs) == 17
    return dirs


@pytest.fixture
def reference_url(warehouse_url, tmp_path, request) -> str:
    """A second, empty warehouse on the same backend, for the full copy."""
    if warehouse_url.startswith("duckdb"):
        return f"duckdb:///{tmp_path}/reference.duckdb"
    from snapshot_factory import postgres_schema_url

    return postgres_schema_url(request.getfixturevalue("postgres_database_url"))


def count(url: str, sql: str) -> int:
    with connect(url) as db:
        return int(db.query(sql)[0][0])


def test_the_whole_night_answers_like_a_full_copy(warehouse_url, reference_url, night):
    reference = reference_url
    create_v1_schema(reference)
    statuses = set()
    for directory in night:
        load_full_copy(reference, directory)
        summary = load_snapshot(warehouse_url, directory)
        statuses.update(summary.statuses.values())
        # The latest views move with every load; the "as of" rows are compared below.
        assert_same_answers(answers(warehouse_url, versioned=True, as_of=False),
                            answers(reference, versioned=False, as_of=False))
    assert statuses == {"published", "quarantined"}  # okrug-32's duplicate candidate
    assert_same_answers(answers(warehouse_url, versioned=True),
                        answers(reference, versioned=False))

    # Reloading a snapshot in the middle of the night, and the last one, changes no answer.
    for directory in (night[5], night[-1]):
        assert not load_snapshot(warehouse_url, directory, replace=True).is_new
        assert_same_answers(answers(warehouse_url, versioned=True),
                            answers(reference, versioned=False))

    # Storage grows with changes: on these four constituencies 10,074 versions against
    # 40,577 copies (3.4x the largest snapshot, whose root lines are a large share; the
    # 3x target of the whole portal is measured by bench/storage.py).
    copies = count(reference, "SELECT count(*) FROM results")
    stored = count(warehouse_url, "SELECT count(*) FROM results")
    assert 0 < stored < copies / 3, (stored, copies)


def test_migration_from_full_copies_keeps_every_answer(warehouse_url, reference_url, night):
    create_v1_schema(warehouse_url)
    half = len(night) // 2
    for directory in night[:half]:
        load_full_copy(warehouse_url, directory)
    before = answers(warehouse_url, versioned=False)
    copies = count(warehouse_url, "SELECT count(*) FROM results")

    assert migrate(warehouse_url) == (2,)
    assert_same_answers(answers(warehouse_url, versioned=True), before)
    assert count(warehouse_url, "SELECT count(*) FROM results") < copies

    # The migrated warehouse goes on loading, sharing rows with the migrated versions.
    reference = reference_url
    create_v1_schema(reference)
    for directory in night:
        load_full_copy(reference, directory)
    for directory in night[half:]:
        assert load_snapshot(warehouse_url, directory).is_new
    assert_same_answers(answers(warehouse_url, versioned=True),
                        answers(reference, versioned=False))
