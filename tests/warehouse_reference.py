"""Today's warehouse semantics as a reference: a full copy of every snapshot (schema v1).

`load_full_copy` writes a snapshot the way the loader did before storage was versioned
(migration 1's tables, every row of every snapshot); `answers` reads the public views and
the "as of snapshot X" rows from either schema, so a test can compare the two exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etl.elections import load_election
from etl.warehouse.backends import connect
from etl.warehouse.migrations import MIGRATIONS, SCHEMA_MIGRATIONS_DDL
from etl.warehouse.snapshot import read_manifest, stage_snapshot

# Each public view with the columns it promises and an order that makes its rows a list.
VIEWS: dict[str, tuple[str, str]] = {
    "latest_published": ("election_id, contest_id, snapshot_id, portal_updated_at, fetched_at",
                         "election_id, contest_id"),
    "latest_results": ("snapshot_id, election_id, contest_id, division_id, line_no,"
                       " choice_position, choice_name, is_against_all, votes, pct_published,"
                       " pct_computed", "contest_id, division_id, line_no"),
    "latest_turnout": ("snapshot_id, election_id, contest_id, division_id, registered,"
                       " ballots_issued, ballots_cast, invalid, valid, precincts_counted,"
                       " precincts_total, turnout_pct_published", "contest_id, division_id"),
    "results_history": ("snapshot_id, portal_updated_at, fetched_at, election_id, contest_id,"
                        " division_id, parent_id, level, name, line_no, choice_position,"
                        " choice_name, is_against_all, votes, pct_published, ballots_cast,"
                        " precincts_counted, precincts_total",
                        "snapshot_id, contest_id, division_id, line_no"),
    "seat_allocation": ("election_id, contest_id, snapshot_id, line_no, choice_position,"
                        " choice_name, is_against_all, votes, pct, passed_threshold, seats,"
                        " method, note", "contest_id, line_no"),
}
# The rows one snapshot held in each versioned table (version 1: `WHERE snapshot_id = X`).
AS_OF: dict[str, tuple[str, str]] = {
    "divisions": ("snapshot_id, election_id, contest_id, division_id, parent_id, level, name",
                  "contest_id, division_id"),
    "turnout": (VIEWS["latest_turnout"][0], "contest_id, division_id"),
    "results": (VIEWS["latest_results"][0], "contest_id, division_id, line_no"),
}
SNAPSHOT_COLUMNS = ("snapshot_id, election_id, portal_updated_at, fetched_at, pages_fetched,"
                    " pages_not_modified, pages_failed")


def create_v1_schema(url: str) -> None:
    """The warehouse schema as migration 1 left it (and nothing newer)."""
    with connect(url) as db, db.transaction():
        db.execute(SCHEMA_MIGRATIONS_DDL)
        for statement in MIGRATIONS[0].statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                   [1, MIGRATIONS[0].name])


def load_full_copy(url: str, snapshot_dir: Path) -> None:
    """Insert every row of a snapshot into a version-1 schema, as the loader used to."""
    manifest = read_manifest(snapshot_dir)
    staged = stage_snapshot(snapshot_dir, load_election(manifest.election_id))
    with connect(url) as db:
        with db.transaction():
            db.execute(
                "INSERT INTO snapshots (snapshot_id, election_id, portal_updated_at, fetched_at,"
                " pages_fetched, pages_not_modified, pages_failed, loaded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP)",
                [manifest.snapshot_id, manifest.election_id, manifest.portal_updated_at,
                 manifest.fetched_at, manifest.pages_fetched, manifest.pages_not_modified,
                 manifest.pages_failed],
            )
            for table, rows in staged.tables.items():
                db.bulk_insert(table, rows)
        # As the loader does: the planner's estimates follow the tables' growth.
        db.refresh_statistics({"snapshots": 1, **{table: rows.num_rows
                                                  for table, rows in staged.tables.items()}})


def answers(url: str, *, versioned: bool, as_of: bool = True) -> dict[str, Any]:
    """Every view's rows, and (`as_of`) each snapshot's rows of the versioned tables."""
    found: dict[str, Any] = {}
    with connect(url) as db:
        found["snapshots"] = db.query(
            f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY snapshot_id")
        found["snapshot_contests"] = db.query(
            "SELECT * FROM snapshot_contests ORDER BY snapshot_id, contest_id")
        for view, (columns, order) in VIEWS.items():
            found[view] = db.query(f"SELECT {columns} FROM {view} ORDER BY {order}")
        for (snapshot_id,) in db.query("SELECT snapshot_id FROM snapshots") if as_of else ():
            for table, (columns, order) in AS_OF.items():
                source = f"{table}_by_snapshot" if versioned else table
                found[f"{table} as of {snapshot_id}"] = db.query(
                    f"SELECT {columns} FROM {source} WHERE snapshot_id = ? ORDER BY {order}",
                    [snapshot_id],
                )
    return found


def assert_same_answers(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal answers, reported per view (a whole-dict diff would be unreadable)."""
    assert sorted(found) == sorted(expected)
    for name, rows in expected.items():
        assert len(found[name]) == len(rows), name
        assert found[name] == rows, name
