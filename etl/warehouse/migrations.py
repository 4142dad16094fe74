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

# Tables that hold a snapshot's rows, in the order a reload deletes them.
SNAPSHOT_TABLES: tuple[str, ...] = (
    "seat_allocations",
    "dq_results",
    "results",
    "turnout",
    "divisions",
    "snapshot_contests",
    "snapshots",
)
