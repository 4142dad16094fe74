"""Write, audit, publish: load a snapshot directory into the warehouse in one transaction.

The snapshot is staged and checked in memory (`etl.warehouse.snapshot`), then its snapshot
row, contest statuses, data rows, quality rows and seat rows are inserted in bulk inside one
transaction. Consumers read through views that show only *published* contests, so nothing
is visible before the commit and a quarantined contest never reaches them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from etl import schema
from etl.elections import ElectionRules, load_election
from etl.memory import release_memory
from etl.warehouse.backends import Backend, connect, redact, typed_frame
from etl.warehouse.migrations import (
    MIGRATIONS,
    SCHEMA_MIGRATIONS_DDL,
    SNAPSHOT_TABLES,
    VERSIONED_TABLES,
    VersionedTable,
)
from etl.warehouse.snapshot import (
    FAILED,
    PUBLISHED,
    QUARANTINED,
    ContestStatus,
    read_manifest,
    stage_snapshot,
)

log = logging.getLogger(__name__)

_MIGRATION_LOCK = "cec-warehouse-migrations"
# Loads are serialised: each takes the next load_seq and compares with the current versions.
_LOAD_LOCK = "cec-warehouse-load"


@dataclass(frozen=True)
class LoadSummary:
    """What a load did: the snapshot, each contest's status, its rows, whether new.

    `rows` counts the snapshot's rows per table (as the `*_by_snapshot` views show them);
    `rows_stored` the rows actually written: for divisions, turnout and results only the
    versions that changed since the previous snapshot.
    """

    snapshot_id: str
    election_id: str
    contests: tuple[ContestStatus, ...]
    rows: Mapping[str, int]
    is_new: bool
    seconds: float
    rows_stored: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def statuses(self) -> dict[str, str]:
        """contest_id -> published / quarantined / failed."""
        return {c.contest_id: c.status for c in self.contests}

    @property
    def quarantined(self) -> tuple[str, ...]:
        """Contests a critical quality check kept from the consumers."""
        return tuple(c.contest_id for c in self.contests if c.status == QUARANTINED)

    @property
    def failed(self) -> tuple[str, ...]:
        """Contests this snapshot has no results for (pages failed or withdrawn)."""
        return tuple(c.contest_id for c in self.contests if c.status == FAILED)

    @property
    def all_published(self) -> bool:
        """True when every contest of the snapshot was published."""
        return all(c.status == PUBLISHED for c in self.contests)


def migrate(warehouse_url: str) -> tuple[int, ...]:
    """Create or upgrade the warehouse schema; return the versions applied now (often none)."""
    with connect(warehouse_url) as db:
        return _migrate(db)


def _migrate(db: Backend) -> tuple[int, ...]:
    if _schema_is_current(db):
        return ()
    with db.transaction():
        # Two loaders starting at once must not both create the schema.
        db.lock(_MIGRATION_LOCK)
        db.execute(SCHEMA_MIGRATIONS_DDL)
        done = {row[0] for row in db.query("SELECT version FROM schema_migrations")}
        applied = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )
            applied.append(migration.version)
    if applied:
        log.info("warehouse schema migrated to version %d (applied %s)", applied[-1], applied)
    return tuple(applied)


def _schema_is_current(db: Backend) -> bool:
    """True when every migration is applied: the common case, answered without DDL or locks."""
    found = db.query(
        "SELECT count(*) FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_name = 'schema_migrations'"
    )
    if not found[0][0]:
        return False
    done = {row[0] for row in db.query("SELECT version FROM schema_migrations")}
    return all(migration.version in done for migration in MIGRATIONS)


def load_snapshot(
    warehouse_url: str,
    snapshot_dir: Path,
    *,
    replace: bool = False,
    rules: ElectionRules | None = None,
) -> LoadSummary:
    """Load a snapshot directory in one transaction; idempotent.

    A snapshot already in the warehouse is skipped (`is_new` False, no rows written): its id
    is derived from the portal state, so the same id means the same data. `replace=True`
    deletes and reloads it in the same transaction instead (after a quality-gate fix).
    """
    started = time.perf_counter()
    manifest = read_manifest(snapshot_dir)
    if rules is None:
        rules = _rules_or_none(manifest.election_id)
    staged = stage_snapshot(snapshot_dir, rules)
    # Reading the Parquet files peaks well above the staged tables, and DuckDB's index
    # builds on top of what is left: at 100,000 precincts, 1.63 -> 1.18 GiB peak. What
    # staging freed is Arrow memory, never held by reference cycles: no collection first.
    release_memory(after="staging the snapshot", collect=False)
    snapshot_id = staged.snapshot_id
    with connect(warehouse_url) as db:
        _migrate(db)
        db.begin()
        try:
            # Serialise loads (PostgreSQL; DuckDB has one writer): each takes the next
            # load_seq and compares its rows with the current versions.
            db.lock(_LOAD_LOCK)
            exists = bool(db.query("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [snapshot_id]))
            if exists and not replace:
                db.rollback()
                known = _stored_statuses(db, snapshot_id)
                log.info("snapshot %s is already in the warehouse: nothing loaded", snapshot_id)
                return LoadSummary(snapshot_id, manifest.election_id, known,
                                   dict.fromkeys(staged.tables, 0), False,
                                   time.perf_counter() - started,
                                   dict.fromkeys(staged.tables, 0))
            if exists:
                _remove_snapshot(db, snapshot_id)
            load_seq = db.query("SELECT coalesce(max(load_seq), 0) + 1 FROM snapshots")[0][0]
            previous_seq = db.query(
                "SELECT max(load_seq) FROM snapshots WHERE election_id = ?",
                [manifest.election_id],
            )[0][0]
            db.execute(
                "INSERT INTO snapshots (snapshot_id, election_id, portal_updated_at, fetched_at,"
                " pages_fetched, pages_not_modified, pages_failed, loaded_at, load_seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP, ?)",
                [snapshot_id, manifest.election_id, manifest.portal_updated_at,
                 manifest.fetched_at, manifest.pages_fetched, manifest.pages_not_modified,
                 manifest.pages_failed, load_seq],
            )
            versioned = {table.name: table for table in VERSIONED_TABLES}
            rows: dict[str, int] = {}
            stored: dict[str, int] = {}
            for table, table_rows in staged.tables.items():
                rows[table] = table_rows.num_rows
                if table in versioned:
                    stored[table] = _store_versions(db, versioned[table], table_rows,
                                                    manifest.election_id, load_seq, previous_seq)
                else:
                    stored[table] = db.bulk_insert(table, table_rows)
                log.debug("snapshot %s: %d rows into %s (%d of the snapshot's)",
                          snapshot_id, stored[table], table, rows[table])
            db.commit()
        except BaseException:
            db.rollback()
            raise
        _refresh_statistics(warehouse_url, db, {"snapshots": 1, **stored})
    seconds = time.perf_counter() - started
    log.info(
        "snapshot %s loaded into %s in %.2fs (%s): rows %s, of them stored %s; contests %s",
        snapshot_id, redact(warehouse_url), seconds, "replaced" if exists else "new", rows,
        stored, dict(Counter(c.status for c in staged.statuses)),
    )
    for status in staged.statuses:
        if status.status != PUBLISHED:
            log.warning("snapshot %s contest %s %s: %s", snapshot_id, status.contest_id,
                        status.status, status.reason)
    return LoadSummary(snapshot_id, manifest.election_id, staged.statuses, rows, not exists,
                       seconds, stored)


def _refresh_statistics(warehouse_url: str, db: Backend, written: dict[str, int]) -> None:
    """The planner's statistics after a committed load (PostgreSQL); a failure is logged,
    not raised: the snapshot is loaded, only later queries may plan worse."""
    try:
        refreshed = db.refresh_statistics(written)
    except Exception:
        log.exception("could not refresh the statistics of %s after a load",
                      redact(warehouse_url))
        return
    if refreshed:
        log.info("statistics of %s refreshed after the load", ", ".join(refreshed))


def _rules_or_none(election_id: str) -> ElectionRules | None:
    try:
        return load_election(election_id)
    except FileNotFoundError as error:
        # The data is still worth loading; the seat allocation is left out (and logged).
        log.warning("%s", error)
        return None


def _stored_statuses(db: Backend, snapshot_id: str) -> tuple[ContestStatus, ...]:
    rows = db.query(
        "SELECT contest_id, status, reason FROM snapshot_contests WHERE snapshot_id = ?"
        " ORDER BY contest_id",
        [snapshot_id],
    )
    return tuple(ContestStatus(*row) for row in rows)


def _store_versions(
    db: Backend,
    table: VersionedTable,
    snapshot_rows: pa.Table,
    election_id: str,
    load_seq: int,
    previous_seq: int | None,
) -> int:
    """Write the snapshot's rows of a versioned table as versions; return the rows written.

    The current versions of the election (valid_to_seq null) are exactly the rows of its
    previously loaded snapshot. One that the new snapshot repeats, key and values alike,
    simply stays current; the others are closed at the previous snapshot, and the new
    snapshot's other rows become new current versions.
    """
    current = db.query(
        f"SELECT 1 FROM {table.name} WHERE election_id = ? AND valid_to_seq IS NULL LIMIT 1",
        [election_id],
    )
    if not current:
        first = pa.array(np.full(snapshot_rows.num_rows, load_seq, dtype=np.int64))
        return db.bulk_insert(table.name, snapshot_rows.append_column("valid_from_seq", first))
    same_key = " AND ".join(f"s.{c} = v.{c}" for c in table.key)
    same_values = " AND ".join(f"s.{c} IS NOT DISTINCT FROM v.{c}" for c in table.values)
    columns = ", ".join(table.columns)
    changes = f"changed_{table.name}"
    with db.staged(snapshot_rows, like=table.name) as staging:
        # One pass over the snapshot and the current versions (a full join on the key):
        # the rows that differ, new ones (no current version) and current versions the
        # snapshot no longer has. Two anti-joins cost twice as much at 2.4 M rows.
        db.execute(
            f"CREATE TEMPORARY TABLE {changes} AS SELECT"
            f" {', '.join(f's.{c}' for c in table.columns)},"
            f" {', '.join(f'v.{c} AS current_{c}' for c in table.key)},"
            " v.valid_from_seq AS current_from_seq"
            f" FROM {staging} AS s FULL JOIN ("
            f"SELECT {', '.join((*table.key, *table.values))}, valid_from_seq FROM {table.name}"
            " WHERE election_id = ? AND valid_to_seq IS NULL) AS v ON "
            f"{same_key} WHERE s.snapshot_id IS NULL OR v.valid_from_seq IS NULL"
            f" OR NOT ({same_values})",
            [election_id],
        )
        current_key = " AND ".join(f"v.{c} = c.current_{c}" for c in table.key)
        db.write(
            f"UPDATE {table.name} AS v SET valid_to_seq = ? FROM {changes} AS c"
            " WHERE v.election_id = ? AND v.valid_to_seq IS NULL"
            f" AND v.valid_from_seq = c.current_from_seq AND {current_key}",
            [previous_seq, election_id],
        )
        written = db.write(
            f"INSERT INTO {table.name} ({columns}, valid_from_seq) SELECT {columns}, ?"
            # in key order, as the first load: the primary-key index is appended to
            f" FROM {changes} WHERE snapshot_id IS NOT NULL ORDER BY {', '.join(table.key)}",
            [load_seq],
        )
        db.execute(f"DROP TABLE {changes}")
    return written


def _remove_snapshot(db: Backend, snapshot_id: str) -> None:
    """Take a snapshot out of the warehouse (for a reload): its copies and its versions.

    Each version's range loses the snapshot's load_seq n: a version of n alone goes; one
    that starts at n now starts at the election's next snapshot; one that ends at n ends
    at the previous; one spanning n is split in two. When n was the election's last
    snapshot, the previous one's versions become current again.
    """
    election_id, seq = db.query(
        "SELECT election_id, load_seq FROM snapshots WHERE snapshot_id = ?", [snapshot_id]
    )[0]
    previous = db.query(
        "SELECT max(load_seq) FROM snapshots WHERE election_id = ? AND load_seq < ?",
        [election_id, seq],
    )[0][0]
    following = db.query(
        "SELECT load_seq, snapshot_id FROM snapshots WHERE election_id = ? AND load_seq > ?"
        " ORDER BY load_seq LIMIT 1",
        [election_id, seq],
    )
    for table in VERSIONED_TABLES:
        name, where = table.name, "election_id = ?"
        columns = ", ".join(c for c in table.columns if c != "snapshot_id")
        if following:
            next_seq, next_id = following[0]
            # Versions spanning n: the part after n, then the part before it.
            db.execute(
                f"INSERT INTO {name} (snapshot_id, {columns}, valid_from_seq, valid_to_seq)"
                f" SELECT ?, {columns}, ?, valid_to_seq FROM {name} WHERE {where}"
                " AND valid_from_seq <= ? AND (valid_to_seq IS NULL OR valid_to_seq > ?)",
                [next_id, next_seq, election_id, seq, seq],
            )
            db.execute(
                f"UPDATE {name} SET valid_to_seq = ? WHERE {where} AND valid_from_seq < ?"
                " AND (valid_to_seq IS NULL OR valid_to_seq >= ?)",
                [previous, election_id, seq, seq],
            )
            db.execute(f"DELETE FROM {name} WHERE {where} AND valid_from_seq = ?",
                       [election_id, seq])
        else:
            db.execute(f"DELETE FROM {name} WHERE {where} AND valid_from_seq = ?",
                       [election_id, seq])
            if previous is not None:
                db.execute(
                    f"UPDATE {name} SET valid_to_seq = NULL WHERE {where} AND valid_to_seq = ?",
                    [election_id, previous],
                )
    for name in SNAPSHOT_TABLES:
        db.execute(f"DELETE FROM {name} WHERE snapshot_id = ?", [snapshot_id])


def previous_published(
    warehouse_url: str, election_id: str, contest_ids: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turnout and results of the latest published snapshot of each contest (all if None).

    Frames have the `etl.schema` columns and dtypes, so the quality gate can compare them
    with a new snapshot; they are empty when nothing was published yet.
    """
    with connect(warehouse_url) as db:
        _migrate(db)
        where, params = "election_id = ?", [election_id]
        if contest_ids is not None:
            if not contest_ids:
                return (typed_frame(pd.DataFrame(), schema.TURNOUT),
                        typed_frame(pd.DataFrame(), schema.RESULTS))
            where += f" AND contest_id IN ({', '.join('?' for _ in contest_ids)})"
            params += list(contest_ids)
        turnout = db.query_typed(
            f"SELECT {', '.join(schema.TURNOUT)} FROM latest_turnout WHERE {where}"
            " ORDER BY contest_id, division_id",
            params, schema.TURNOUT,
        )
        results = db.query_typed(
            f"SELECT {', '.join(schema.RESULTS)} FROM latest_results WHERE {where}"
            " ORDER BY contest_id, division_id, line_no",
            params, schema.RESULTS,
        )
    return turnout, results


SEAT_COLUMNS = (
    "election_id", "contest_id", "snapshot_id", "line_no", "choice_position", "choice_name",
    "is_against_all", "votes", "pct", "passed_threshold", "seats", "method", "note",
)


def seat_allocation(
    warehouse_url: str, election_id: str, contest_id: str | None = None
) -> list[dict[str, Any]]:
    """Rows of the `seat_allocation` view (latest published snapshot), in ballot order."""
    where, params = "election_id = ?", [election_id]
    if contest_id is not None:
        where += " AND contest_id = ?"
        params.append(contest_id)
    with connect(warehouse_url) as db:
        _migrate(db)
        rows = db.query(
            f"SELECT {', '.join(SEAT_COLUMNS)} FROM seat_allocation WHERE {where}"
            " ORDER BY contest_id, line_no",
            params,
        )
    return [dict(zip(SEAT_COLUMNS, row, strict=True)) for row in rows]
