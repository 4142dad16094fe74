"""Turn crawled pages into the tidy frames of one snapshot, and read/write snapshot dirs.

A snapshot directory holds `divisions.parquet`, `turnout.parquet`, `results.parquet` and
`snapshot.json` (metadata, failures and the archived page of every URL used). The JSON
is written last: a directory without it is an interrupted write, not a snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from etl import schema
from etl.records import CrawledDivision, FetchFailure, PageRef

if TYPE_CHECKING:
    from etl.crawl import ContestCrawl

log = logging.getLogger(__name__)

SNAPSHOT_META_FILE = "snapshot.json"


@dataclass(frozen=True)
class SnapshotFrames:
    """The three normalised frames of one snapshot (columns per `etl.schema`)."""

    divisions: pd.DataFrame
    turnout: pd.DataFrame
    results: pd.DataFrame

    def row_counts(self) -> dict[str, int]:
        """Rows per frame, for logs and summaries."""
        return {name: len(getattr(self, name)) for name in schema.FRAMES}


def snapshot_id_for(
    election_id: str,
    portal_updated_at: datetime | None,
    pages: Iterable[PageRef],
    failures: Iterable[FetchFailure],
) -> str:
    """Deterministic id: the same portal state (time and page contents) gives the same id."""
    digest = hashlib.sha256()
    for url, sha256 in sorted((p.url, p.sha256) for p in pages):
        digest.update(f"{url}\t{sha256}\n".encode())
    for url in sorted(f.url for f in failures):
        digest.update(f"{url}\tfailed\n".encode())
    stamp = portal_updated_at.strftime("%Y%m%dT%H%M%S") if portal_updated_at else "undated"
    return f"{election_id}-{stamp}-{digest.hexdigest()[:12]}"


def portal_time(crawls: Sequence[ContestCrawl]) -> datetime | None:
    """The portal's own `updated` time of a snapshot: the latest any page declares."""
    times = [d.page.portal_updated_at for c in crawls for d in c.divisions if d.page.portal_updated_at]
    return max(times) if times else None


# Divisions normalised per Arrow batch: ~20 ballot lines each, so results batches stay
# around 200,000 rows; no frame of a whole 100,000-precinct contest is ever built in pandas.
FRAME_BATCH_DIVISIONS = 10_000
_ARROW_TYPES = {
    "string": pa.string(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "boolean": pa.bool_(),
}


def arrow_schema(columns: dict[str, str], *, with_snapshot_id: bool = True) -> pa.Schema:
    """The Arrow schema of a frame of `etl.schema` (optionally without `snapshot_id`)."""
    return pa.schema(
        [(name, _ARROW_TYPES[dtype]) for name, dtype in columns.items()
         if with_snapshot_id or name != "snapshot_id"]
    )


def frame_batches(
    election_id: str, crawls: Sequence[ContestCrawl], *, snapshot_id: str | None = None,
    batch_divisions: int = FRAME_BATCH_DIVISIONS,
) -> Iterator[dict[str, pa.RecordBatch]]:
    """The three frames of crawled contests as Arrow record batches, a few divisions at a time.

    Without `snapshot_id` the batches lack that column (a crawl batch is staged before the
    snapshot's id, which depends on every batch, is known).
    """
    batch: list[tuple[str, CrawledDivision]] = []
    for crawl in crawls:
        for division in crawl.divisions:
            batch.append((crawl.contest_id, division))
            if len(batch) >= batch_divisions:
                yield _record_batches(snapshot_id, election_id, batch)
                batch = []
    if batch:
        yield _record_batches(snapshot_id, election_id, batch)


def _record_batches(
    snapshot_id: str | None, election_id: str, divisions: list[tuple[str, CrawledDivision]]
) -> dict[str, pa.RecordBatch]:
    div_cols: dict[str, list[Any]] = {c: [] for c in schema.DIVISIONS}
    turn_cols: dict[str, list[Any]] = {c: [] for c in schema.TURNOUT}
    res_cols: dict[str, list[Any]] = {c: [] for c in schema.RESULTS if c != "pct_computed"}
    cast_of_line: list[int | None] = []
    protocol_columns = [c for c in schema.TURNOUT if c not in schema.DIVISIONS]
    for contest_id, division in divisions:
        page = division.page
        for columns in (div_cols, turn_cols):
            columns["contest_id"].append(contest_id)
            columns["division_id"].append(division.division_id)
        div_cols["parent_id"].append(division.parent_id)
        div_cols["level"].append(page.level)
        div_cols["name"].append(page.name)
        protocol = page.protocol
        for column in protocol_columns:
            turn_cols[column].append(getattr(protocol, column))
        lines = page.lines
        if not lines:
            continue
        n_lines = len(lines)
        res_cols["contest_id"].extend([contest_id] * n_lines)
        res_cols["division_id"].extend([division.division_id] * n_lines)
        cast_of_line.extend([protocol.ballots_cast] * n_lines)
        for line in lines:
            res_cols["choice_position"].append(line.choice_position)
            res_cols["choice_name"].append(line.choice_name)
            res_cols["is_against_all"].append(line.is_against_all)
            res_cols["votes"].append(line.votes)
            res_cols["pct_published"].append(line.pct_published)
    votes = np.array(res_cols["votes"], dtype=np.float64)  # None -> nan
    cast = np.array(cast_of_line, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = votes / cast * 100
    # No share where votes or ballots are missing, or nobody voted (as before: never 0/0).
    res_cols["pct_computed"] = pa.array(pct, mask=~np.isfinite(pct) | (cast == 0))
    return {
        "divisions": _record_batch(div_cols, schema.DIVISIONS, snapshot_id, election_id),
        "turnout": _record_batch(turn_cols, schema.TURNOUT, snapshot_id, election_id),
        "results": _record_batch(res_cols, schema.RESULTS, snapshot_id, election_id),
    }


def _record_batch(
    columns: dict[str, Any], dtypes: dict[str, str], snapshot_id: str | None, election_id: str
) -> pa.RecordBatch:
    n = len(columns["division_id"])
    arrays = []
    target = arrow_schema(dtypes, with_snapshot_id=snapshot_id is not None)
    for field in target:
        if field.name == "snapshot_id":
            arrays.append(pa.array([snapshot_id] * n, pa.string()))
        elif field.name == "election_id":
            arrays.append(pa.array([election_id] * n, pa.string()))
        else:
            values = columns[field.name]
            arrays.append(values if isinstance(values, pa.Array) else pa.array(values, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def build_frames(snapshot_id: str, election_id: str, crawls: Sequence[ContestCrawl]) -> SnapshotFrames:
    """Build the divisions, turnout and results frames from crawled contests (in memory)."""
    parts: dict[str, list[pa.RecordBatch]] = {name: [] for name in schema.FRAMES}
    for batches in frame_batches(election_id, crawls, snapshot_id=snapshot_id):
        for name, batch in batches.items():
            parts[name].append(batch)
    frames = {}
    for name, columns in schema.FRAMES.items():
        table = pa.Table.from_batches(parts[name], schema=arrow_schema(columns))
        frames[name] = table.to_pandas(types_mapper=_pandas_type).astype(columns)
    return SnapshotFrames(**frames)


def _pandas_type(arrow_type: pa.DataType) -> Any:
    return {
        pa.string(): pd.StringDtype(),
        pa.int64(): pd.Int64Dtype(),
        pa.float64(): pd.Float64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }.get(arrow_type)


def write_snapshot(out_dir: Path, frames: SnapshotFrames, meta: dict[str, Any]) -> None:
    """Write the frames and `snapshot.json` (last, so its presence means complete)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SNAPSHOT_META_FILE).unlink(missing_ok=True)
    for name in schema.FRAMES:
        tmp = out_dir / f".{name}.parquet.tmp"
        getattr(frames, name).to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / f"{name}.parquet")
    _write_meta(out_dir, meta)


def _write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    tmp_meta = out_dir / f".{SNAPSHOT_META_FILE}.tmp"
    tmp_meta.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp_meta, out_dir / SNAPSHOT_META_FILE)


class SnapshotDirError(ValueError):
    """A directory that is not a complete, readable snapshot; the message says why."""


def read_snapshot_meta(snapshot_dir: Path) -> dict[str, Any]:
    """`snapshot.json` of a snapshot directory, or a SnapshotDirError saying why not."""
    if not snapshot_dir.is_dir():
        raise SnapshotDirError(f"{snapshot_dir} is not a directory")
    path = snapshot_dir / SNAPSHOT_META_FILE
    if not path.is_file():
        raise SnapshotDirError(
            f"{snapshot_dir} is not a complete snapshot: {SNAPSHOT_META_FILE} missing "
            "(an interrupted scrape writes it last)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotDirError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or not meta.get("snapshot_id"):
        raise SnapshotDirError(f"{path} has no snapshot_id")
    return meta


def read_snapshot_frames(snapshot_dir: Path) -> dict[str, pd.DataFrame]:
    """The divisions, turnout and results frames of a snapshot directory, typed."""
    frames = {}
    for name, columns in schema.FRAMES.items():
        path = snapshot_dir / f"{name}.parquet"
        if not path.is_file():
            raise SnapshotDirError(f"{snapshot_dir} is not a snapshot: {path.name} missing")
        try:
            # nullable dtypes straight from Arrow: no float64 detour for integer columns
            frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
        except (OSError, ValueError) as exc:
            raise SnapshotDirError(f"{path} is unreadable: {exc}") from exc
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise SnapshotDirError(f"{path} lacks columns {', '.join(missing)}")
        frames[name] = frame[list(columns)].astype(columns)
    return frames
