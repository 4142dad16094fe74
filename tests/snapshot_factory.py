"""Helpers for tests: small snapshot directories built with pandas, and a throwaway
PostgreSQL database for the session.

`small_snapshot()` is a consistent kg2021-shaped snapshot (party list + 3 constituencies,
40 precincts, from the one synthetic-election generator in `synthetic.py`); the `with_*`
functions return changed copies for a scenario.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from scratch import ADMIN_URL_ENV, DEFAULT_ADMIN_URL, scratch_database, scratch_schema_url
from synthetic import SyntheticSnapshot, warehouse_snapshot

from etl import schema


def at(hour: int, minute: int = 0, day: int = 28) -> datetime:
    """A portal time on election night (UTC)."""
    return datetime(2021, 11, day, hour, minute, tzinfo=UTC)


def small_snapshot(
    snapshot_id: str, portal_updated_at: datetime | None = None, *, counted: float = 1.0,
    seed: int = 0,
) -> SyntheticSnapshot:
    """A small consistent snapshot: contests `list` (4 regions of 2 districts of 5
    precincts), `okrug-1` … `okrug-3` (2 candidates each)."""
    return warehouse_snapshot(
        snapshot_id,
        portal_updated_at=portal_updated_at or at(16),
        regions=4,
        districts_per_region=2,
        precincts_per_district=5,
        okrugs=3,
        counted=counted,
        seed=seed,
    )


def with_dq_row(
    snapshot: SyntheticSnapshot, check_id: str, contest_id: str | None, *,
    severity: str = "critical", success: bool = False, message: str = "finding",
) -> SyntheticSnapshot:
    """A copy with one more quality row (by default a failed critical check)."""
    row = {
        "snapshot_id": snapshot.meta["snapshot_id"], "check_id": check_id,
        "severity": severity, "success": success, "contest_id": contest_id,
        "division_id": None, "choice_position": None, "observed": "143.27",
        "expected": "<= 100.00", "message": message,
    }
    assert snapshot.dq_results is not None
    dq = pd.concat([snapshot.dq_results, pd.DataFrame([row])], ignore_index=True)
    return replace(snapshot, dq_results=dq.astype(schema.DQ_RESULTS))


def without_contest(
    snapshot: SyntheticSnapshot, contest_id: str, failures: list[dict[str, Any]]
) -> SyntheticSnapshot:
    """A copy where `contest_id`'s pages failed: listed, but no rows, and its failures."""
    def drop(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["contest_id"] != contest_id].reset_index(drop=True)

    meta = {**snapshot.meta, "failures": [*snapshot.meta["failures"], *failures],
            "pages_failed": snapshot.meta["pages_failed"] + len(failures)}
    return replace(snapshot, meta=meta, divisions=drop(snapshot.divisions),
                   turnout=drop(snapshot.turnout), results=drop(snapshot.results))


def with_root_figures(
    snapshot: SyntheticSnapshot, contest_id: str, votes: Mapping[int | None, int],
    ballots_cast: int,
) -> SyntheticSnapshot:
    """A copy whose root division of `contest_id` shows `votes` (None: against-all)."""
    divisions = snapshot.divisions
    root = divisions.loc[
        (divisions["contest_id"] == contest_id) & divisions["parent_id"].isna(), "division_id"
    ].item()
    results = snapshot.results.copy()
    at_root = (results["contest_id"] == contest_id) & (results["division_id"] == root)
    for index in results.index[at_root]:
        position = results.at[index, "choice_position"]
        key = None if pd.isna(position) else int(position)
        results.at[index, "votes"] = votes[key]
        results.at[index, "pct_published"] = round(votes[key] * 100 / ballots_cast, 2)
    turnout = snapshot.turnout.copy()
    root_turnout = (turnout["contest_id"] == contest_id) & (turnout["division_id"] == root)
    turnout.loc[root_turnout, "ballots_cast"] = ballots_cast
    return replace(snapshot, results=results, turnout=turnout)


def with_names(snapshot: SyntheticSnapshot, names: list[str]) -> SyntheticSnapshot:
    """A copy whose division, choice and dq message texts cycle through `names`."""
    divisions = snapshot.divisions.copy()
    divisions["name"] = [names[i % len(names)] for i in range(len(divisions))]
    results = snapshot.results.copy()
    results["choice_name"] = [names[i % len(names)] for i in range(len(results))]
    assert snapshot.dq_results is not None
    dq = snapshot.dq_results.copy()
    dq["message"] = [names[i % len(names)] for i in range(len(dq))]
    return replace(snapshot, divisions=divisions, results=results,
                   dq_results=dq.astype(schema.DQ_RESULTS))


def write(snapshot: SyntheticSnapshot, root: Path) -> Path:
    """Write the snapshot under `root/<snapshot_id>` and return that directory."""
    return snapshot.write(root / str(snapshot.meta["snapshot_id"]))


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database on the machine's PostgreSQL; dropped afterwards.

    No PostgreSQL means an error here, never a skip: CI must fail without it.
    """
    with scratch_database(os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL), "cec_test") as url:
        yield url


def postgres_schema_url(database_url: str) -> str:
    """A URL whose connections work in a new, empty schema of the database."""
    return scratch_schema_url(database_url, "t")
