"""Stage a snapshot directory for loading: read and check it, decide each contest's status,
number the rows, and work out the seats of the published contests.

Everything here is pure (files in, frames out); `etl.warehouse.load` writes the result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from etl import schema
from etl.elections import ElectionRules
from etl.normalise import (
    SNAPSHOT_META_FILE,
    SnapshotDirError,
    read_snapshot_frames,
    read_snapshot_meta,
)
from etl.quality.audit import unaudited_contests
from etl.quality.gate import DQ_RESULTS_FILE
from etl.seats import SINGLE_MANDATE, ContestLine, allocate_contest

log = logging.getLogger(__name__)

PUBLISHED, QUARANTINED, FAILED = "published", "quarantined", "failed"

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "boolean": pa.bool_(),
    "Int32": pa.int32(),
}

# Columns of the warehouse tables, in load order: the frames' columns plus row numbers.
RESULTS_TABLE: dict[str, str] = {**schema.RESULTS, "line_no": "Int32"}
DQ_TABLE: dict[str, str] = {"row_no": "Int32", **schema.DQ_RESULTS}
SEATS_TABLE: dict[str, str] = {
    "snapshot_id": "string",
    "election_id": "string",
    "contest_id": "string",
    "line_no": "Int32",
    "choice_position": "Int64",
    "choice_name": "string",
    "is_against_all": "boolean",
    "votes": "Int64",
    "pct": "Float64",
    "passed_threshold": "boolean",
    "seats": "Int32",
    "method": "string",
    "note": "string",
}
CONTESTS_TABLE: dict[str, str] = {
    "snapshot_id": "string",
    "contest_id": "string",
    "status": "string",
    "reason": "string",
}


class SnapshotError(ValueError):
    """A snapshot directory that cannot be loaded; the message says what to fix."""


@dataclass(frozen=True)
class ContestStatus:
    """Whether a contest of a snapshot reaches the consumers, and why not."""

    contest_id: str
    status: str  # published / quarantined / failed
    reason: str | None


@dataclass(frozen=True)
class SnapshotManifest:
    """`snapshot.json`: the snapshot's identity, times and page counts."""

    snapshot_id: str
    election_id: str
    contests: tuple[str, ...]
    portal_updated_at: datetime | None
    fetched_at: datetime
    pages_fetched: int
    pages_not_modified: int
    pages_failed: int
    failures: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class StagedSnapshot:
    """A snapshot ready to load: the manifest, each table's rows and the contest statuses."""

    manifest: SnapshotManifest
    statuses: tuple[ContestStatus, ...]
    tables: Mapping[str, pa.Table]

    @property
    def snapshot_id(self) -> str:
        """The snapshot's id."""
        return self.manifest.snapshot_id


def read_manifest(snapshot_dir: Path) -> SnapshotManifest:
    """Read and check `snapshot.json`."""
    try:
        meta = read_snapshot_meta(snapshot_dir)
    except SnapshotDirError as error:
        raise SnapshotError(str(error)) from error
    try:
        updated = meta.get("portal_updated_at")
        manifest = SnapshotManifest(
            snapshot_id=str(meta["snapshot_id"]),
            election_id=str(meta["election_id"]),
            contests=tuple(str(c) for c in meta.get("contests", ())),
            portal_updated_at=_aware(updated, "portal_updated_at") if updated else None,
            fetched_at=_aware(meta["fetched_at"], "fetched_at"),
            pages_fetched=int(meta.get("pages_fetched", 0)),
            pages_not_modified=int(meta.get("pages_not_modified", 0)),
            pages_failed=int(meta.get("pages_failed", 0)),
            failures=tuple(meta.get("failures", ())),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise SnapshotError(f"{snapshot_dir / SNAPSHOT_META_FILE}: {error!r}") from error
    return manifest


def _aware(text: str, key: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{key} {text!r} has no UTC offset")
    return moment


def read_dq_results(path: Path) -> pd.DataFrame:
    """The quality gate's `dq_results.parquet`, typed; without it nothing was audited."""
    if not path.is_file():
        raise SnapshotError(f"{path} is missing: run the quality gate (etl validate) first")
    frame = pd.read_parquet(path)
    missing = [c for c in schema.DQ_RESULTS if c not in frame.columns]
    if missing:
        raise SnapshotError(f"{path} lacks columns {missing}")
    return frame[list(schema.DQ_RESULTS)].astype(schema.DQ_RESULTS)


def stage_snapshot(snapshot_dir: Path, rules: ElectionRules | None) -> StagedSnapshot:
    """Read a snapshot directory and prepare every table's rows; `rules` give the seats."""
    manifest = read_manifest(snapshot_dir)
    try:
        frames = read_snapshot_frames(snapshot_dir)
    except SnapshotDirError as error:
        raise SnapshotError(str(error)) from error
    divisions, turnout, results = frames["divisions"], frames["turnout"], frames["results"]
    dq = read_dq_results(snapshot_dir / DQ_RESULTS_FILE)
    _check_identity(manifest, {"divisions": divisions, "turnout": turnout, "results": results})
    _check_identity(manifest, {"dq_results": dq}, election=False)
    for name, frame in (("divisions", divisions), ("turnout", turnout)):
        duplicated = frame.duplicated(["contest_id", "division_id"], keep=False)
        if duplicated.any():
            keys = frame.loc[duplicated, ["contest_id", "division_id"]].drop_duplicates()
            raise SnapshotError(
                f"{snapshot_dir}: {name} has duplicate divisions "
                f"{keys.head(5).to_records(index=False).tolist()}"
            )
    if dq["success"].isna().any() or dq["check_id"].isna().any():
        raise SnapshotError(f"{snapshot_dir / DQ_RESULTS_FILE}: success and check_id must not be null")

    # line_no: the row's place in its division's results table, as the page listed it.
    results["line_no"] = results.groupby(["contest_id", "division_id"], sort=False).cumcount()
    dq.insert(0, "row_no", range(len(dq)))
    statuses = contest_statuses(manifest, divisions, dq)
    seats = seat_rows(manifest, statuses, divisions, turnout, results, rules)
    contests = pd.DataFrame(
        {
            "snapshot_id": manifest.snapshot_id,
            "contest_id": [s.contest_id for s in statuses],
            "status": [s.status for s in statuses],
            "reason": [s.reason for s in statuses],
        }
    )
    tables = {
        "snapshot_contests": to_arrow(contests, CONTESTS_TABLE),
        "divisions": to_arrow(divisions, schema.DIVISIONS),
        "turnout": to_arrow(turnout, schema.TURNOUT),
        "results": to_arrow(results, RESULTS_TABLE),
        "dq_results": to_arrow(dq, DQ_TABLE),
        "seat_allocations": to_arrow(seats, SEATS_TABLE),
    }
    return StagedSnapshot(manifest=manifest, statuses=statuses, tables=tables)


def _check_identity(
    manifest: SnapshotManifest, frames: Mapping[str, pd.DataFrame], election: bool = True
) -> None:
    for name, frame in frames.items():
        foreign = frame["snapshot_id"].isna() | (frame["snapshot_id"] != manifest.snapshot_id)
        if foreign.any():
            found = sorted(map(str, frame.loc[foreign, "snapshot_id"].unique()))
            raise SnapshotError(
                f"{name} has rows of snapshots {found[:5]}, "
                f"the manifest says {manifest.snapshot_id!r}"
            )
        if election and set(frame["election_id"].dropna()) - {manifest.election_id}:
            raise SnapshotError(
                f"{name} rows belong to other elections than {manifest.election_id!r}"
            )


def to_arrow(frame: pd.DataFrame, columns: Mapping[str, str]) -> pa.Table:
    """The frame's `columns`, in order, as an Arrow table with the matching types."""
    arrow_schema = pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in columns.items()])
    typed = frame[list(columns)].astype(dict(columns))
    return pa.Table.from_pandas(typed, schema=arrow_schema, preserve_index=False)


def contest_statuses(
    manifest: SnapshotManifest, divisions: pd.DataFrame, dq: pd.DataFrame
) -> tuple[ContestStatus, ...]:
    """Each contest's status: quarantined by a failed critical check, failed without a root.

    A failed critical check without a contest_id concerns the whole snapshot and
    quarantines every contest of it.
    """
    listed = list(manifest.contests)
    contests = listed + sorted(set(divisions["contest_id"].dropna()) - set(listed))
    critical = dq[(dq["severity"] == "critical") & ~dq["success"].astype(bool)]
    snapshot_wide = _count_checks(critical[critical["contest_id"].isna()])
    roots = divisions[divisions["parent_id"].isna()].groupby("contest_id").size()
    unaudited = unaudited_contests(dq, contests)  # every configured check ran, or held
    statuses = []
    for contest_id in contests:
        failed_checks = _count_checks(critical[critical["contest_id"] == contest_id])
        failed_checks.update(snapshot_wide)
        root_count = int(roots.get(contest_id, 0))
        if failed_checks:
            listing = ", ".join(
                f"{check} ({count} row{'s' if count > 1 else ''})"
                for check, count in sorted(failed_checks.items())
            )
            statuses.append(
                ContestStatus(contest_id, QUARANTINED, f"critical checks failed: {listing}")
            )
        elif contest_id in unaudited:
            statuses.append(ContestStatus(contest_id, QUARANTINED, unaudited[contest_id]))
        elif root_count == 0:
            statuses.append(ContestStatus(contest_id, FAILED, _no_root_reason(manifest, contest_id)))
        elif root_count > 1:
            reason = f"{root_count} root divisions (parent_id null); a contest has one"
            statuses.append(ContestStatus(contest_id, FAILED, reason))
        else:
            statuses.append(ContestStatus(contest_id, PUBLISHED, None))
    return tuple(statuses)


def _count_checks(rows: pd.DataFrame) -> dict[str, int]:
    return {str(check): int(count) for check, count in rows.groupby("check_id").size().items()}


def _no_root_reason(manifest: SnapshotManifest, contest_id: str) -> str:
    failures = [f for f in manifest.failures if f.get("contest_id") == contest_id]
    if not failures:
        return "no root division in this snapshot (withdrawn or not listed); no page failed"
    shown = "; ".join(
        f"{f.get('url')}: {f.get('reason')}"
        + (f" (HTTP {f['status']})" if f.get("status") is not None else "")
        for f in failures[:3]
    )
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    return f"no root division; {len(failures)} page(s) failed: {shown}{more}"


def seat_rows(
    manifest: SnapshotManifest,
    statuses: tuple[ContestStatus, ...],
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    results: pd.DataFrame,
    rules: ElectionRules | None,
) -> pd.DataFrame:
    """Seat lines of every published contest, from its root division and the rules."""
    rows: list[dict[str, Any]] = []
    published = [s.contest_id for s in statuses if s.status == PUBLISHED]
    if rules is None:
        if published:
            log.warning(
                "snapshot %s: no rule file for election %s, so no seat allocation",
                manifest.snapshot_id, manifest.election_id,
            )
        published = []
    # Only the root divisions matter: narrow the frames once, not once per contest.
    roots = divisions.loc[divisions["parent_id"].isna(), ["contest_id", "division_id"]]
    key = ["contest_id", "division_id"]
    root_lines = dict(tuple(results.merge(roots, on=key).groupby("contest_id", sort=False)))
    root_figures = dict(tuple(turnout.merge(roots, on=key).groupby("contest_id", sort=False)))
    empty_lines, empty_figures = results.iloc[:0], turnout.iloc[:0]
    for contest_id in published:
        assert rules is not None
        try:
            contest = rules.contest(contest_id)
        except KeyError as error:
            log.warning("snapshot %s: %s; no seats for it", manifest.snapshot_id, error)
            continue
        lines = root_lines.get(contest_id, empty_lines).sort_values("line_no")
        figures = root_figures.get(contest_id, empty_figures)
        try:
            seat_lines = allocate_contest(
                [
                    ContestLine(
                        line_no=int(line.line_no),
                        choice_position=_int(line.choice_position),
                        choice_name=None if pd.isna(line.choice_name) else str(line.choice_name),
                        is_against_all=_flag(line.is_against_all),
                        votes=_int(line.votes),
                    )
                    for line in lines.itertuples(index=False)
                ],
                kind=contest.kind,
                seats=contest.seats,
                method=contest.method,
                threshold_pct=contest.threshold_pct,
                threshold_base=contest.threshold_base,
                ballots_cast=_int(figures["ballots_cast"].iloc[0]) if len(figures) else None,
                valid=_int(figures["valid"].iloc[0]) if len(figures) else None,
            )
        except ValueError as error:
            raise SnapshotError(
                f"snapshot {manifest.snapshot_id}, contest {contest_id} was not quarantined "
                f"but its seats cannot be allocated: {error}"
            ) from error
        method = contest.method if contest.kind != SINGLE_MANDATE else SINGLE_MANDATE
        rows.extend(
            {
                "snapshot_id": manifest.snapshot_id,
                "election_id": manifest.election_id,
                "contest_id": contest_id,
                "method": method,
                **asdict(seat_line),
            }
            for seat_line in seat_lines
        )
    return pd.DataFrame(rows, columns=list(SEATS_TABLE))


def _int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def _flag(value: Any) -> bool:
    return False if pd.isna(value) else bool(value)
