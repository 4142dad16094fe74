"""Write, audit, publish: load a snapshot directory into the warehouse in one transaction.

The snapshot is staged and checked in memory (`etl.warehouse.snapshot`), then its snapshot
row, contest statuses, data rows, quality rows and seat rows are inserted in bulk inside one
transaction. Consumers read through views that show only *published* contests, so nothing
is visible before the commit and a quarantined contest never reaches them.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from etl import schema
from etl.elections import ElectionRules, load_election
from etl.warehouse.backends import Backend, connect, redact
from etl.warehouse.migrations import MIGRATIONS, SCHEMA_MIGRATIONS_DDL, SNAPSHOT_TABLES
from etl.warehouse.snapshot import (
    FAILED,
    PUBLISHED,
    QUARANTINED,
    ContestStatus,
    read_manifest,
    stage_snapshot,
)

log = logging.getLogger(__name__)

# Test hook: seconds to sleep with the load transaction open, every row inserted and the
# commit not yet sent, so a test can SIGKILL the loader at the worst moment.
HOLD_ENV = "CEC_WAREHOUSE_TEST_HOLD_SECONDS"
_MIGRATION_LOCK = "cec-warehouse-migrations"


@dataclass(frozen=True)
class LoadSummary:
    """What a load did: the snapshot, each contest's status, the rows written, whether new."""

    snapshot_id: str
    election_id: str
    contests: tuple[ContestStatus, ...]
    rows: Mapping[str, int]
    is_new: bool
    seconds: float

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
    snapshot_id = staged.snapshot_id
    with connect(warehouse_url) as db:
        _migrate(db)
        db.begin()
        try:
            # Serialise two loads of the same snapshot (PostgreSQL; DuckDB has one writer).
            db.lock(f"cec-snapshot:{snapshot_id}")
            exists = bool(db.query("SELECT 1 FROM snapshots WHERE snapshot_id = ?", [snapshot_id]))
            if exists and not replace:
                db.rollback()
                stored = _stored_statuses(db, snapshot_id)
                log.info("snapshot %s is already in the warehouse: nothing loaded", snapshot_id)
                return LoadSummary(snapshot_id, manifest.election_id, stored,
                                   dict.fromkeys(staged.tables, 0), False,
                                   time.perf_counter() - started)
            if exists:
                for table in SNAPSHOT_TABLES:
                    db.execute(f"DELETE FROM {table} WHERE snapshot_id = ?", [snapshot_id])
            db.execute(
                "INSERT INTO snapshots (snapshot_id, election_id, portal_updated_at, fetched_at,"
                " pages_fetched, pages_not_modified, pages_failed, loaded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP)",
                [snapshot_id, manifest.election_id, manifest.portal_updated_at,
                 manifest.fetched_at, manifest.pages_fetched, manifest.pages_not_modified,
                 manifest.pages_failed],
            )
            rows = {}
            for table, table_rows in staged.tables.items():
                rows[table] = db.bulk_insert(table, table_rows)
                log.debug("snapshot %s: %d rows into %s", snapshot_id, rows[table], table)
            _hold_for_tests(snapshot_id)
            db.commit()
        except BaseException:
            db.rollback()
            raise
    seconds = time.perf_counter() - started
    log.info(
        "snapshot %s loaded into %s in %.2fs (%s): rows %s; contests %s",
        snapshot_id, redact(warehouse_url), seconds, "replaced" if exists else "new", rows,
        dict(Counter(c.status for c in staged.statuses)),
    )
    for status in staged.statuses:
        if status.status != PUBLISHED:
            log.warning("snapshot %s contest %s %s: %s", snapshot_id, status.contest_id,
                        status.status, status.reason)
    return LoadSummary(snapshot_id, manifest.election_id, staged.statuses, rows, not exists,
                       seconds)


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


def _hold_for_tests(snapshot_id: str) -> None:
    seconds = float(os.environ.get(HOLD_ENV, "0") or 0)
    if seconds > 0:
        log.warning("holding the load transaction of %s open for %.1fs (%s)",
                    snapshot_id, seconds, HOLD_ENV)
        time.sleep(seconds)


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
                return _typed(pd.DataFrame(), schema.TURNOUT), _typed(pd.DataFrame(), schema.RESULTS)
            where += f" AND contest_id IN ({', '.join('?' for _ in contest_ids)})"
            params += list(contest_ids)
        turnout = db.query_frame(
            f"SELECT {', '.join(schema.TURNOUT)} FROM latest_turnout WHERE {where}"
            " ORDER BY contest_id, division_id",
            params,
        )
        results = db.query_frame(
            f"SELECT {', '.join(schema.RESULTS)} FROM latest_results WHERE {where}"
            " ORDER BY contest_id, division_id, line_no",
            params,
        )
    return _typed(turnout, schema.TURNOUT), _typed(results, schema.RESULTS)


def _typed(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    typed = frame.reindex(columns=list(columns)).astype(dict(columns))
    return typed.reset_index(drop=True)


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
