"""Versioned schema migrations, shared by both backends (the SQL is portable between them).

A migration is applied once, in a transaction with its `schema_migrations` row, so a second
run changes nothing. Never edit a released migration: append a new one (and update the
README's column lists).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step: a version number, a name and its statements, run in order."""

    version: int
    name: str
    statements: tuple[str, ...]


SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""

# The latest *published* snapshot of each election and contest, the one row every
# latest_* view and seat_allocation joins on. NULLS LAST: a snapshot without a portal time
# never outranks one with it; snapshot_id makes the order total.
_LATEST_PUBLISHED = """
CREATE VIEW latest_published AS
SELECT election_id, contest_id, snapshot_id, portal_updated_at, fetched_at
FROM (
    SELECT s.election_id, c.contest_id, s.snapshot_id, s.portal_updated_at, s.fetched_at,
           row_number() OVER (
               PARTITION BY s.election_id, c.contest_id
               ORDER BY s.portal_updated_at DESC NULLS LAST, s.fetched_at DESC,
                        s.snapshot_id DESC
           ) AS recency
    FROM snapshots AS s
    JOIN snapshot_contests AS c ON c.snapshot_id = s.snapshot_id
    WHERE c.status = 'published'
) AS ranked
WHERE recency = 1
"""

_LATEST_RESULTS = """
CREATE VIEW latest_results AS
SELECT r.snapshot_id, r.election_id, r.contest_id, r.division_id, r.line_no,
       r.choice_position, r.choice_name, r.is_against_all, r.votes, r.pct_published,
       r.pct_computed
FROM results AS r
JOIN latest_published AS l
  ON l.snapshot_id = r.snapshot_id AND l.contest_id = r.contest_id
"""

_LATEST_TURNOUT = """
CREATE VIEW latest_turnout AS
SELECT t.snapshot_id, t.election_id, t.contest_id, t.division_id, t.registered,
       t.ballots_issued, t.ballots_cast, t.invalid, t.valid, t.precincts_counted,
       t.precincts_total, t.turnout_pct_published
FROM turnout AS t
JOIN latest_published AS l
  ON l.snapshot_id = t.snapshot_id AND l.contest_id = t.contest_id
"""

# National (the root division) and regional (its children) lines of every published
# snapshot: what a chart of the night's figures needs, without the precincts.
_RESULTS_HISTORY = """
CREATE VIEW results_history AS
WITH top_divisions AS (
    SELECT d.snapshot_id, d.contest_id, d.division_id, d.parent_id, d.level, d.name
    FROM divisions AS d
    WHERE d.parent_id IS NULL
    UNION ALL
    SELECT d.snapshot_id, d.contest_id, d.division_id, d.parent_id, d.level, d.name
    FROM divisions AS d
    JOIN divisions AS root
      ON root.snapshot_id = d.snapshot_id AND root.contest_id = d.contest_id
     AND root.division_id = d.parent_id AND root.parent_id IS NULL
)
SELECT s.snapshot_id, s.portal_updated_at, s.fetched_at, s.election_id, c.contest_id,
       d.division_id, d.parent_id, d.level, d.name, r.line_no, r.choice_position,
       r.choice_name, r.is_against_all, r.votes, r.pct_published, t.ballots_cast,
       t.precincts_counted, t.precincts_total
FROM snapshots AS s
JOIN snapshot_contests AS c ON c.snapshot_id = s.snapshot_id AND c.status = 'published'
JOIN top_divisions AS d ON d.snapshot_id = s.snapshot_id AND d.contest_id = c.contest_id
JOIN results AS r
  ON r.snapshot_id = d.snapshot_id AND r.contest_id = d.contest_id
 AND r.division_id = d.division_id
LEFT JOIN turnout AS t
  ON t.snapshot_id = d.snapshot_id AND t.contest_id = d.contest_id
 AND t.division_id = d.division_id
"""

_SEAT_ALLOCATION = """
CREATE VIEW seat_allocation AS
SELECT a.election_id, a.contest_id, a.snapshot_id, a.line_no, a.choice_position,
       a.choice_name, a.is_against_all, a.votes, a.pct, a.passed_threshold, a.seats,
       a.method, a.note
FROM seat_allocations AS a
JOIN latest_published AS l
  ON l.snapshot_id = a.snapshot_id AND l.contest_id = a.contest_id
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "snapshots, contest statuses, frames, quality results, seats and the latest views",
        (
            """
            CREATE TABLE snapshots (
                snapshot_id TEXT PRIMARY KEY,
                election_id TEXT NOT NULL,
                portal_updated_at TIMESTAMPTZ,
                fetched_at TIMESTAMPTZ NOT NULL,
                pages_fetched BIGINT NOT NULL,
                pages_not_modified BIGINT NOT NULL,
                pages_failed BIGINT NOT NULL,
                loaded_at TIMESTAMPTZ NOT NULL
            )
            """,
            """
            CREATE TABLE snapshot_contests (
                snapshot_id TEXT NOT NULL,
                contest_id TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('published', 'quarantined', 'failed')),
                reason TEXT,
                PRIMARY KEY (snapshot_id, contest_id)
            )
            """,
            """
            CREATE TABLE divisions (
                snapshot_id TEXT NOT NULL,
                election_id TEXT NOT NULL,
                contest_id TEXT NOT NULL,
                division_id TEXT NOT NULL,
                parent_id TEXT,
                level TEXT,
                name TEXT,
                PRIMARY KEY (snapshot_id, contest_id, division_id)
            )
            """,
            """
            CREATE TABLE turnout (
                snapshot_id TEXT NOT NULL,
                election_id TEXT NOT NULL,
                contest_id TEXT NOT NULL,
                division_id TEXT NOT NULL,
                registered BIGINT,
                ballots_issued BIGINT,
                ballots_cast BIGINT,
                invalid BIGINT,
                valid BIGINT,
                precincts_counted BIGINT,
                precincts_total BIGINT,
                turnout_pct_published DOUBLE PRECISION,
                PRIMARY KEY (snapshot_id, contest_id, division_id)
            )
            """,
            # No key on the ballot line: a quarantined snapshot may hold the same candidate
            # twice in one table (the duplicates incident), so rows are keyed by position.
            """
            CREATE TABLE results (
                snapshot_id TEXT NOT NULL,
                election_id TEXT NOT NULL,
                contest_id TEXT NOT NULL,
                division_id TEXT NOT NULL,
                line_no INTEGER NOT NULL,
                choice_position BIGINT,
                choice_name TEXT,
                is_against_all BOOLEAN,
                votes BIGINT,
                pct_published DOUBLE PRECISION,
                pct_computed DOUBLE PRECISION,
                PRIMARY KEY (snapshot_id, contest_id, division_id, line_no)
            )
            """,
            """
            CREATE TABLE dq_results (
                snapshot_id TEXT NOT NULL,
                row_no INTEGER NOT NULL,
                check_id TEXT NOT NULL,
                severity TEXT NOT NULL,
                success BOOLEAN NOT NULL,
                contest_id TEXT,
                division_id TEXT,
                choice_position BIGINT,
                observed TEXT,
                expected TEXT,
                message TEXT,
                PRIMARY KEY (snapshot_id, row_no)
            )
            """,
            """
            CREATE TABLE seat_allocations (
                snapshot_id TEXT NOT NULL,
                election_id TEXT NOT NULL,
                contest_id TEXT NOT NULL,
                line_no INTEGER NOT NULL,
                choice_position BIGINT,
                choice_name TEXT,
                is_against_all BOOLEAN NOT NULL,
                votes BIGINT,
                pct DOUBLE PRECISION,
                passed_threshold BOOLEAN,
                seats INTEGER,
                method TEXT NOT NULL,
                note TEXT,
                PRIMARY KEY (snapshot_id, contest_id, line_no)
            )
            """,
            _LATEST_PUBLISHED,
            _LATEST_RESULTS,
            _LATEST_TURNOUT,
            _RESULTS_HISTORY,
            _SEAT_ALLOCATION,
        ),
    ),
)

# --- Version 2: storage that grows with changes, not with snapshots (SCD type 2) ----------
#
# `divisions`, `turnout` and `results` keep one row per *version* of a division's row: the
# row holds for every snapshot of its election whose `snapshots.load_seq` lies in
# [valid_from_seq, valid_to_seq] (valid_to_seq null: still current). A row that did not
# change since the previous snapshot costs nothing new. `snapshot_id` is the snapshot that
# first showed the version. The `*_by_snapshot` views expand versions back to one row per
# snapshot: exactly the rows version 1 stored, and what every consumer view reads.


@dataclass(frozen=True)
class VersionedTable:
    """A table stored as versions: the natural key within an election and the value columns."""

    name: str
    key: tuple[str, ...]
    values: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The version-1 columns, in order (snapshot_id first)."""
        return ("snapshot_id", "election_id", *self.key, *self.values)


VERSIONED_TABLES: tuple[VersionedTable, ...] = (
    VersionedTable("divisions", ("contest_id", "division_id"), ("parent_id", "level", "name")),
    VersionedTable(
        "turnout",
        ("contest_id", "division_id"),
        ("registered", "ballots_issued", "ballots_cast", "invalid", "valid",
         "precincts_counted", "precincts_total", "turnout_pct_published"),
    ),
    VersionedTable(
        "results",
        ("contest_id", "division_id", "line_no"),
        ("choice_position", "choice_name", "is_against_all", "votes", "pct_published",
         "pct_computed"),
    ),
)

_V2_COLUMN_TYPES = {
    "divisions": """
        snapshot_id TEXT NOT NULL,
        election_id TEXT NOT NULL,
        contest_id TEXT NOT NULL,
        division_id TEXT NOT NULL,
        parent_id TEXT,
        level TEXT,
        name TEXT""",
    "turnout": """
        snapshot_id TEXT NOT NULL,
        election_id TEXT NOT NULL,
        contest_id TEXT NOT NULL,
        division_id TEXT NOT NULL,
        registered BIGINT,
        ballots_issued BIGINT,
        ballots_cast BIGINT,
        invalid BIGINT,
        valid BIGINT,
        precincts_counted BIGINT,
        precincts_total BIGINT,
        turnout_pct_published DOUBLE PRECISION""",
    "results": """
        snapshot_id TEXT NOT NULL,
        election_id TEXT NOT NULL,
        contest_id TEXT NOT NULL,
        division_id TEXT NOT NULL,
        line_no INTEGER NOT NULL,
        choice_position BIGINT,
        choice_name TEXT,
        is_against_all BOOLEAN,
        votes BIGINT,
        pct_published DOUBLE PRECISION,
        pct_computed DOUBLE PRECISION""",
}


def holds_at(alias: str, seq: str) -> str:
    """SQL: the version `alias` holds in the snapshot whose load_seq is `seq`."""
    return (f"{alias}.valid_from_seq <= {seq}"
            f" AND ({alias}.valid_to_seq IS NULL OR {alias}.valid_to_seq >= {seq})")


def _versioned_ddl(table: VersionedTable) -> str:
    # The key leads with the natural key, so one division's versions are one index range
    # (latest_results for one division is an index lookup, see the README's EXPLAIN).
    key = ", ".join(("election_id", *table.key, "valid_from_seq"))
    return f"""
    CREATE TABLE {table.name}_v2 ({_V2_COLUMN_TYPES[table.name]},
        valid_from_seq BIGINT NOT NULL,
        valid_to_seq BIGINT,
        PRIMARY KEY ({key})
    )
    """


def _compress(table: VersionedTable) -> str:
    """Fold version-1 rows (a copy per snapshot) into versions: gaps and islands.

    Snapshots of an election have consecutive load_seq after the migration, so a row starts
    a new version when its key was absent from the previous snapshot or a value changed.
    """
    key = ", ".join(("election_id", *table.key))
    changed = " OR ".join(
        f"lag(r.{c}) OVER w IS DISTINCT FROM r.{c}" for c in table.values
    )
    columns = ", ".join(table.columns)
    return f"""
    INSERT INTO {table.name}_v2 ({columns}, valid_from_seq, valid_to_seq)
    WITH marked AS (
        SELECT r.*, s.load_seq,
               max(s.load_seq) OVER (PARTITION BY s.election_id) AS last_seq,
               CASE WHEN lag(s.load_seq) OVER w IS DISTINCT FROM s.load_seq - 1
                      OR {changed} THEN 1 ELSE 0 END AS starts
        FROM {table.name} AS r
        JOIN snapshots_v2 AS s ON s.snapshot_id = r.snapshot_id
        WINDOW w AS (PARTITION BY {", ".join("r." + c for c in ("election_id", *table.key))}
                     ORDER BY s.load_seq)
    ),
    islands AS (
        SELECT *, sum(starts) OVER (PARTITION BY {key} ORDER BY load_seq
                                    ROWS UNBOUNDED PRECEDING) AS island
        FROM marked
    ),
    spans AS (
        SELECT *, max(load_seq) OVER (PARTITION BY {key}, island) AS island_end
        FROM islands
    )
    SELECT {columns}, load_seq,
           CASE WHEN island_end = last_seq THEN NULL ELSE island_end END
    FROM spans
    WHERE starts = 1
    """


def _by_snapshot_view(table: VersionedTable) -> str:
    selected = ", ".join(
        ["s.snapshot_id", *(f"v.{c}" for c in table.columns if c != "snapshot_id")]
    )
    return f"""
    CREATE VIEW {table.name}_by_snapshot AS
    SELECT {selected}
    FROM snapshots AS s
    JOIN {table.name} AS v ON v.election_id = s.election_id AND {holds_at("v", "s.load_seq")}
    """


# Version-1 views, rewritten over the *_by_snapshot views: same columns, same rows.
def _over_versions(view_sql: str, tables: tuple[str, ...]) -> str:
    """The view with each `FROM/JOIN <table> AS` read from `<table>_by_snapshot` instead."""
    rewritten = view_sql
    for table in tables:
        for verb in ("FROM", "JOIN"):
            rewritten = rewritten.replace(f"{verb} {table} AS", f"{verb} {table}_by_snapshot AS")
    if rewritten == view_sql:
        raise AssertionError("nothing to rewrite")  # a view text changed under us
    return rewritten


_LATEST_RESULTS_V2 = _over_versions(_LATEST_RESULTS, ("results",))
_LATEST_TURNOUT_V2 = _over_versions(_LATEST_TURNOUT, ("turnout",))
_RESULTS_HISTORY_V2 = _over_versions(_RESULTS_HISTORY, ("divisions", "results", "turnout"))

MIGRATIONS += (
    Migration(
        2,
        "versions instead of copies: divisions, turnout and results valid over a snapshot range",
        (
            "DROP VIEW seat_allocation",
            "DROP VIEW results_history",
            "DROP VIEW latest_turnout",
            "DROP VIEW latest_results",
            "DROP VIEW latest_published",
            # load_seq: the order snapshots were loaded in (existing ones: the portal's).
            """
            CREATE TABLE snapshots_v2 (
                snapshot_id TEXT PRIMARY KEY,
                election_id TEXT NOT NULL,
                portal_updated_at TIMESTAMPTZ,
                fetched_at TIMESTAMPTZ NOT NULL,
                pages_fetched BIGINT NOT NULL,
                pages_not_modified BIGINT NOT NULL,
                pages_failed BIGINT NOT NULL,
                loaded_at TIMESTAMPTZ NOT NULL,
                load_seq BIGINT NOT NULL UNIQUE
            )
            """,
            """
            INSERT INTO snapshots_v2
            SELECT snapshot_id, election_id, portal_updated_at, fetched_at, pages_fetched,
                   pages_not_modified, pages_failed, loaded_at,
                   row_number() OVER (ORDER BY election_id, portal_updated_at NULLS FIRST,
                                      fetched_at, snapshot_id)
            FROM snapshots
            """,
            *(_versioned_ddl(table) for table in VERSIONED_TABLES),
            *(_compress(table) for table in VERSIONED_TABLES),
            *(f"DROP TABLE {table.name}" for table in VERSIONED_TABLES),
            "DROP TABLE snapshots",
            "ALTER TABLE snapshots_v2 RENAME TO snapshots",
            *(f"ALTER TABLE {table.name}_v2 RENAME TO {table.name}" for table in VERSIONED_TABLES),
            *(_by_snapshot_view(table) for table in VERSIONED_TABLES),
            _LATEST_PUBLISHED,
            _LATEST_RESULTS_V2,
            _LATEST_TURNOUT_V2,
            _RESULTS_HISTORY_V2,
            _SEAT_ALLOCATION,
        ),
    ),
)

# Tables that hold a copy per snapshot, in the order a reload deletes them (the versioned
# tables are handled by `etl.warehouse.load`).
SNAPSHOT_TABLES: tuple[str, ...] = (
    "seat_allocations",
    "dq_results",
    "snapshot_contests",
    "snapshots",
)
