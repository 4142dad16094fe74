"""Stage a snapshot directory for loading: read and check it, decide each contest's status,
number the rows, and work out the seats of the published contests.

Everything here is pure (files in, Arrow tables out); `etl.warehouse.load` writes the result.
The big tables (divisions, turnout, results) stay Arrow from the parquet files to the
database; only the root divisions' rows become Python objects (for the seats), and three
columns of the quality rows a pandas frame (for the publishing audit).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import schema
from etl.elections import ElectionRules
from etl.normalise import SNAPSHOT_META_FILE, SnapshotDirError, read_snapshot_meta
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
# Arrow to pandas for the few rows that go through pandas: nullable dtypes, as etl.schema.
_PANDAS_TYPES: dict[pa.DataType, Any] = {
    pa.string(): pd.StringDtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.float64(): pd.Float64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}
_DIVISION_KEY = ["contest_id", "division_id"]

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


def read_dq_results(path: Path) -> pa.Table:
    """The quality gate's `dq_results.parquet`, typed; without it nothing was audited."""
    if not path.is_file():
        raise SnapshotError(f"{path} is missing: run the quality gate (etl validate) first")
    return _read_typed(path, schema.DQ_RESULTS, "quality results")


def read_snapshot_tables(snapshot_dir: Path) -> dict[str, pa.Table]:
    """The divisions, turnout and results files as Arrow tables with the warehouse's types.

    Read with pyarrow and kept columnar: at 100,000 precincts (2.4 M result rows) a pandas
    detour cost most of a load's time (strings into Python objects and back).
    """
    tables = {}
    for name, columns in schema.FRAMES.items():
        path = snapshot_dir / f"{name}.parquet"
        if not path.is_file():
            raise SnapshotError(f"{snapshot_dir} is not a snapshot: {path.name} missing")
        tables[name] = _read_typed(path, columns, name)
    return tables


def _read_typed(path: Path, columns: Mapping[str, str], what: str) -> pa.Table:
    try:
        found = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in found]
        if missing:
            raise SnapshotError(f"{path} lacks columns {', '.join(missing)}")
        table = pq.read_table(path, columns=list(columns)).select(list(columns))
        return table.cast(arrow_schema(columns))
    except (OSError, pa.ArrowException) as error:
        raise SnapshotError(f"{path} is unreadable as {what}: {error}") from error


def stage_snapshot(snapshot_dir: Path, rules: ElectionRules | None) -> StagedSnapshot:
    """Read a snapshot directory and prepare every table's rows; `rules` give the seats."""
    manifest = read_manifest(snapshot_dir)
    tables = read_snapshot_tables(snapshot_dir)
    divisions, turnout, results = tables["divisions"], tables["turnout"], tables["results"]
    dq_path = snapshot_dir / DQ_RESULTS_FILE
    dq = read_dq_results(dq_path)
    _check_identity(manifest, tables)
    _check_identity(manifest, {"dq_results": dq}, election=False)
    for name in ("divisions", "turnout"):
        _check_unique_divisions(snapshot_dir, name, tables[name])
    if dq["success"].null_count or dq["check_id"].null_count:
        raise SnapshotError(f"{dq_path}: success and check_id must not be null")

    # line_no: the row's place in its division's results table, as the page listed it.
    results = results.append_column("line_no", line_numbers(results))
    dq = dq.add_column(0, "row_no", pa.array(np.arange(dq.num_rows, dtype=np.int32)))
    roots = divisions.filter(pc.is_null(divisions["parent_id"])).select(_DIVISION_KEY)
    contests_seen = [c for c in pc.unique(divisions["contest_id"]).to_pylist() if c is not None]
    root_counts = Counter(roots["contest_id"].to_pylist())
    statuses = contest_statuses(manifest, contests_seen, root_counts, dq)
    seats = seat_rows(manifest, statuses, _root_rows(results, roots), _root_rows(turnout, roots),
                      rules)
    contests = {
        "snapshot_id": [manifest.snapshot_id] * len(statuses),
        "contest_id": [s.contest_id for s in statuses],
        "status": [s.status for s in statuses],
        "reason": [s.reason for s in statuses],
    }
    staged = {
        "snapshot_contests": pa.Table.from_pydict(contests, arrow_schema(CONTESTS_TABLE)),
        "divisions": in_key_order(divisions, _DIVISION_KEY),
        "turnout": in_key_order(turnout, _DIVISION_KEY),
        "results": in_key_order(results, [*_DIVISION_KEY, "line_no"]),
        "dq_results": dq,
        "seat_allocations": pa.Table.from_pylist(seats, arrow_schema(SEATS_TABLE)),
    }
    return StagedSnapshot(manifest=manifest, statuses=statuses, tables=staged)


def _check_identity(
    manifest: SnapshotManifest, tables: Mapping[str, pa.Table], election: bool = True
) -> None:
    for name, table in tables.items():
        snapshot_ids = table["snapshot_id"]
        foreign = pc.invert(pc.fill_null(pc.equal(snapshot_ids, manifest.snapshot_id), False))
        if pc.any(foreign, min_count=0).as_py():
            found = sorted(str(s) for s in pc.unique(snapshot_ids.filter(foreign)).to_pylist())
            raise SnapshotError(
                f"{name} has rows of snapshots {found[:5]}, "
                f"the manifest says {manifest.snapshot_id!r}"
            )
        # A null election_id is let through, as before (the table's NOT NULL refuses it).
        if election and pc.any(pc.not_equal(table["election_id"], manifest.election_id),
                               min_count=0).as_py():
            raise SnapshotError(
                f"{name} rows belong to other elections than {manifest.election_id!r}"
            )


def _check_unique_divisions(snapshot_dir: Path, name: str, table: pa.Table) -> None:
    counts = table.group_by(_DIVISION_KEY).aggregate([([], "count_all")])
    duplicated = counts.filter(pc.greater(counts["count_all"], 1))
    if duplicated.num_rows:
        keys = list(zip(*(duplicated[c].to_pylist() for c in _DIVISION_KEY), strict=True))
        raise SnapshotError(f"{snapshot_dir}: {name} has duplicate divisions {keys[:5]}")


def line_numbers(results: pa.Table) -> pa.Array:
    """Each row's place among the rows of its (contest_id, division_id), in file order, 0-based.

    Integer codes of the key and one stable sort, instead of a groupby on strings; rows
    of one division need not be adjacent (a duplicated line may come last).
    """
    rows = results.num_rows
    codes = np.zeros(rows, dtype=np.int64)
    for column in _DIVISION_KEY:
        encoded = pc.dictionary_encode(results[column].combine_chunks(), null_encoding="encode")
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        codes = codes * max(len(encoded.dictionary), 1) + indices
    order = np.argsort(codes, kind="stable")
    grouped = codes[order]
    starts = np.ones(rows, dtype=bool)
    np.not_equal(grouped[1:], grouped[:-1], out=starts[1:])
    positions = np.arange(rows)
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    numbers = np.empty(rows, dtype=np.int32)
    numbers[order] = positions - group_start
    return pa.array(numbers, pa.int32())


def in_key_order(table: pa.Table, key: Sequence[str]) -> pa.Table:
    """The rows sorted by `key`, strings in byte order (PostgreSQL's C collation, DuckDB's).

    The primary-key index is then appended to rather than inserted into at random: at
    100,000 precincts that cut PostgreSQL's CPU for the results COPY from ~13 s to ~7.5 s.
    The sort key is one integer per row (the rank of each string among its column's
    distinct values), cheaper than a sort on the strings themselves.
    """
    rows = table.num_rows
    sort_key = np.zeros(rows, dtype=np.int64)
    span = 1
    for column in key:
        values = table[column].combine_chunks()
        if pa.types.is_integer(values.type) and not values.null_count:
            codes = values.to_numpy().astype(np.int64)
            codes = codes - (codes.min() if rows else 0)
            size = int(codes.max()) + 1 if rows else 1
        else:
            encoded = pc.dictionary_encode(values, null_encoding="encode")
            ranks = np.empty(len(encoded.dictionary), dtype=np.int64)
            ranks[pc.array_sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(ranks))
            codes = ranks[encoded.indices.to_numpy(zero_copy_only=False)]
            size = max(len(ranks), 1)
        span *= size
        if span >= 2**62:  # too many distinct values for one integer: sort the columns
            return table.sort_by([(column, "ascending") for column in key])
        sort_key = sort_key * size + codes
    if rows < 2 or bool(np.all(sort_key[1:] >= sort_key[:-1])):
        return table  # already in order: spare the copy of every column
    return table.take(pa.array(np.argsort(sort_key, kind="stable")))


def _root_rows(table: pa.Table, roots: pa.Table) -> list[dict[str, Any]]:
    """The rows of the root divisions (a few hundred among millions), as dicts."""
    candidates = table.filter(
        pc.is_in(table["division_id"], value_set=roots["division_id"].combine_chunks()))
    keys = set(zip(roots["contest_id"].to_pylist(), roots["division_id"].to_pylist(),
                   strict=True))
    return [row for row in candidates.to_pylist()
            if (row["contest_id"], row["division_id"]) in keys]


def arrow_schema(columns: Mapping[str, str]) -> pa.Schema:
    """The Arrow schema of a table's `columns` (name -> pandas dtype name)."""
    return pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in columns.items()])


def contest_statuses(
    manifest: SnapshotManifest,
    contests_seen: Sequence[str],
    root_counts: Mapping[str, int],
    dq: pa.Table,
) -> tuple[ContestStatus, ...]:
    """Each contest's status: quarantined by a failed critical check, failed without a root.

    `contests_seen` are the contests the divisions name, `root_counts` their divisions
    without a parent, `dq` the quality results. A failed critical check without a
    contest_id concerns the whole snapshot and quarantines every contest of it.
    """
    listed = list(manifest.contests)
    contests = listed + sorted(set(contests_seen) - set(listed))
    failed = pc.and_(pc.equal(dq["severity"], "critical"), pc.invert(dq["success"]))
    critical = dq.filter(pc.fill_null(failed, False))
    checks_failed: dict[str | None, Counter[str]] = defaultdict(Counter)
    for contest_id, check_id in zip(critical["contest_id"].to_pylist(),
                                    critical["check_id"].to_pylist(), strict=True):
        checks_failed[contest_id][check_id] += 1
    audit_columns = ["check_id", "contest_id", "division_id"]
    unaudited = unaudited_contests(  # every configured check ran, or held
        dq.select(audit_columns).to_pandas(types_mapper=_PANDAS_TYPES.get), contests)
    statuses = []
    for contest_id in contests:
        # A snapshot-wide count of a check replaces the contest's own (as it always has).
        failed_checks = {**checks_failed[contest_id], **checks_failed[None]}
        root_count = int(root_counts.get(contest_id, 0))
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
    root_results: Sequence[Mapping[str, Any]],
    root_turnout: Sequence[Mapping[str, Any]],
    rules: ElectionRules | None,
) -> list[dict[str, Any]]:
    """Seat lines of every published contest (`SEATS_TABLE` columns), from the rules and the
    rows of the root divisions (`root_results` with line_no, `root_turnout`)."""
    rows: list[dict[str, Any]] = []
    published = [s.contest_id for s in statuses if s.status == PUBLISHED]
    if rules is None:
        if published:
            log.warning(
                "snapshot %s: no rule file for election %s, so no seat allocation",
                manifest.snapshot_id, manifest.election_id,
            )
        published = []
    root_lines: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for line in root_results:
        root_lines[line["contest_id"]].append(line)
    root_figures = {figures["contest_id"]: figures for figures in root_turnout}
    for contest_id in published:
        assert rules is not None
        try:
            contest = rules.contest(contest_id)
        except KeyError as error:
            log.warning("snapshot %s: %s; no seats for it", manifest.snapshot_id, error)
            continue
        figures = root_figures.get(contest_id, {})
        try:
            seat_lines = allocate_contest(
                [
                    ContestLine(
                        line_no=line["line_no"],
                        choice_position=line["choice_position"],
                        choice_name=line["choice_name"],
                        is_against_all=bool(line["is_against_all"]),
                        votes=line["votes"],
                    )
                    for line in sorted(root_lines[contest_id], key=lambda line: line["line_no"])
                ],
                kind=contest.kind,
                seats=contest.seats,
                method=contest.method,
                threshold_pct=contest.threshold_pct,
                threshold_base=contest.threshold_base,
                ballots_cast=figures.get("ballots_cast"),
                valid=figures.get("valid"),
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
                # shallow: asdict's deep copies cost more than the allocation itself
                **{field.name: getattr(seat_line, field.name) for field in fields(seat_line)},
            }
            for seat_line in seat_lines
        )
    return rows
