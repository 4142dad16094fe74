"""Turn crawled pages into the tidy frames of one snapshot, and read/write snapshot dirs.

pandas is imported when frames are made, not with this module: the crawl imports it, and
its worker processes fork before anything needs pandas.

A snapshot directory holds `divisions.parquet`, `turnout.parquet`, `results.parquet` and
`snapshot.json` (metadata, failures and the archived page of every URL used). The JSON
is written last: a directory without it is an interrupted write, not a snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from etl import schema
from etl.records import (
    LINE_FIELDS,
    LINK_FIELDS,
    PROTOCOL_FIELDS,
    CrawledDivision,
    FetchFailure,
    PageRef,
)

if TYPE_CHECKING:
    import pandas as pd

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


def portal_time(crawled: CrawlTable) -> datetime | None:
    """The portal's own `updated` time of a snapshot: the latest any page declares."""
    # Each distinct stamp once, in the order pages list them (max keeps the first of equals).
    stamps = dict.fromkeys(crawled.pages.column("portal_updated_at").to_pylist())
    times = [datetime.fromisoformat(stamp) for stamp in stamps if stamp]
    return max(times) if times else None


# The crawled pages in columns (see `CrawlTable`): the staged form of a crawl batch and
# what the frames are built from. Ballot lines, child links and fractional count cells
# are list columns, so each is one flat Arrow array whatever the number of pages.
# Struct fields in the order `etl.records.page_record` writes a line's and a link's values.
_LINE_ARROW = {"choice_position": pa.int64(), "choice_name": pa.string(),
               "is_against_all": pa.bool_(), "votes": pa.int64(), "pct_published": pa.float64()}
LINE_TYPE = pa.struct([(name, _LINE_ARROW[name]) for name in LINE_FIELDS])
LINK_TYPE = pa.struct([(name, pa.string()) for name in LINK_FIELDS])
CELL_TYPE = pa.struct([("figure", pa.string()), ("text", pa.string())])
PAGE_SCHEMA = pa.schema([
    ("contest_id", pa.string()), ("division_id", pa.string()), ("parent_id", pa.string()),
    ("url", pa.string()), ("sha256", pa.string()), ("declared_id", pa.string()),
    ("level", pa.string()), ("name", pa.string()),
    ("portal_updated_at", pa.string()),  # ISO 8601 with the offset the page gave
    *[(name, pa.float64() if name == "turnout_pct_published" else pa.int64())
      for name in PROTOCOL_FIELDS],
    ("has_results_table", pa.bool_()),
    ("lines", pa.list_(LINE_TYPE)),
    ("children", pa.list_(LINK_TYPE)),
    ("fractional_counts", pa.list_(CELL_TYPE)),
])
_NESTED = {"lines": LINE_TYPE, "children": LINK_TYPE, "fractional_counts": CELL_TYPE}


@dataclass(frozen=True)
class CrawlTable:
    """Crawled contests in columns: `pages` has one row per division page (PAGE_SCHEMA),
    contests in order and each contest's divisions in tree order; `contests` say what each
    contest's crawl counted and what failed."""

    pages: pa.Table
    contests: tuple[ContestCrawl, ...]

    @classmethod
    def concat(cls, parts: Sequence[CrawlTable]) -> CrawlTable:
        """Several crawl batches as one (contests in the order of the parts)."""
        if not parts:
            return crawl_table((), ())
        return cls(pa.concat_tables([part.pages for part in parts]),
                   tuple(c for part in parts for c in part.contests))


def crawl_table(contests: Sequence[ContestCrawl],
                divisions: Iterable[CrawledDivision]) -> CrawlTable:
    """Crawled contests in columns: their summaries and their parsed pages, in order."""
    flat: dict[str, list[Any]] = {name: [] for name in PAGE_SCHEMA.names if name not in _NESTED}
    nested: dict[str, tuple[list[Any], list[int]]] = {name: ([], [0]) for name in _NESTED}
    protocol_columns = [flat[name] for name in PROTOCOL_FIELDS]
    for contest_id, division_id, parent_id, url, sha256, page in divisions:
        flat["contest_id"].append(contest_id)
        flat["division_id"].append(division_id)
        flat["parent_id"].append(parent_id)
        flat["url"].append(url)
        flat["sha256"].append(sha256)
        flat["declared_id"].append(page.declared_id)
        flat["level"].append(page.level)
        flat["name"].append(page.name)
        flat["portal_updated_at"].append(page.portal_updated_at)
        for column, value in zip(protocol_columns, page.protocol, strict=True):
            column.append(value)
        flat["has_results_table"].append(page.has_results_table)
        for name, values in (("lines", page.lines), ("children", page.children),
                             ("fractional_counts", page.fractional_counts)):
            items, offsets = nested[name]
            items.extend(values)
            offsets.append(len(items))
    arrays = []
    for field in PAGE_SCHEMA:
        if field.name in _NESTED:
            items, offsets = nested[field.name]
            arrays.append(_list_array(_NESTED[field.name], items, offsets))
        else:
            arrays.append(pa.array(flat[field.name], field.type))
    return CrawlTable(pa.Table.from_arrays(arrays, schema=PAGE_SCHEMA), tuple(contests))


def _list_array(struct: pa.StructType, items: list[tuple[Any, ...]], offsets: list[int]) -> pa.Array:
    # Items are tuples in the struct's field order (Arrow reads them as structs directly).
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(items, struct),
                                    type=pa.list_(struct))


_ARROW_TYPES = {
    "string": pa.string(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "boolean": pa.bool_(),
}


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    """The Arrow schema of a frame of `etl.schema`."""
    return pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in columns.items()])


def build_frames(snapshot_id: str, election_id: str, crawled: CrawlTable) -> SnapshotFrames:
    """The divisions, turnout and results frames of crawled pages (column by column)."""
    pages = crawled.pages
    n_pages = pages.num_rows
    lines = pages.column("lines").combine_chunks()
    assert isinstance(lines, pa.ListArray)
    # Each ballot line's page: the row index repeated as many times as the page has lines.
    line_page = np.repeat(np.arange(n_pages), lines.value_lengths().fill_null(0).to_numpy())
    line_columns = dict(zip([field.name for field in LINE_TYPE], lines.flatten().flatten(),
                            strict=True))
    votes = line_columns["votes"].to_numpy(zero_copy_only=False).astype(np.float64)
    cast = pages.column("ballots_cast").to_numpy().astype(np.float64)[line_page]
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = votes / cast * 100
    # No share where votes or ballots are missing, or nobody voted (never 0/0).
    line_columns["pct_computed"] = pa.array(pct, mask=~np.isfinite(pct) | (cast == 0))
    take = pa.array(line_page, pa.int64())
    for key in ("contest_id", "division_id"):
        line_columns[key] = pages.column(key).take(take)
    sources = {
        "divisions": ({name: pages.column(name) for name in schema.DIVISIONS
                       if name in PAGE_SCHEMA.names}, n_pages),
        "turnout": ({name: pages.column(name) for name in schema.TURNOUT
                     if name in PAGE_SCHEMA.names}, n_pages),
        "results": (line_columns, len(line_page)),
    }
    frames = {}
    for name, columns in schema.FRAMES.items():
        values, rows = sources[name]
        constant = {"snapshot_id": snapshot_id, "election_id": election_id}
        # pa.repeat, not a Python list of the same string: ~0.3 s less per million rows.
        arrays = [pa.repeat(pa.scalar(constant[column], pa.string()), rows)
                  if column in constant else values[column] for column in columns]
        table = pa.Table.from_arrays(arrays, schema=arrow_schema(columns))
        frames[name] = table.to_pandas(types_mapper=_pandas_type).astype(columns)
    return SnapshotFrames(**frames)


def _pandas_type(arrow_type: pa.DataType) -> Any:
    import pandas as pd

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
    tmp_meta.write_text(_readable_json(meta), encoding="utf-8")
    os.replace(tmp_meta, out_dir / SNAPSHOT_META_FILE)


def _readable_json(meta: dict[str, Any]) -> str:
    """The metadata as JSON with a key a line and a list item a line (a snapshot lists
    ~5,000 pages: `indent=` would take json's pure-Python encoder, ten times slower)."""
    # One encoder for every item: json.dumps(..., ensure_ascii=False) builds a new one per
    # call (0.3 s of assembly at 50,000 precincts, one call per page).
    encode = json.JSONEncoder(ensure_ascii=False).encode

    def value(item: Any) -> str:
        if isinstance(item, list) and item:
            return "[\n  " + ",\n  ".join(map(encode, item)) + "\n ]"
        return encode(item)

    return "{\n" + ",\n".join(f" {encode(key)}: {value(item)}"
                               for key, item in meta.items()) + "\n}\n"


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
        data = path.read_bytes()
        version = hashlib.sha256(data).digest()
        if _last_meta is not None and _last_meta[0] == version:
            return dict(_last_meta[1])
        meta = json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotDirError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or not meta.get("snapshot_id"):
        raise SnapshotDirError(f"{path} has no snapshot_id")
    _remember_meta(version, meta)
    return dict(meta)


# The last `snapshot.json` parsed, by the digest of its bytes: one cycle reads it in each
# stage (gate, load, alerts, summary), and parsing it took ~0.12 s each at 100,000
# precincts (reading and digesting it ~0.02 s). Callers get a copy of its top level; none
# changes what is inside.
_last_meta: tuple[bytes, dict[str, Any]] | None = None


def _remember_meta(version: bytes, meta: dict[str, Any]) -> None:
    global _last_meta  # noqa: PLW0603 - a one-entry cache
    _last_meta = (version, meta)


def read_snapshot_frames(snapshot_dir: Path) -> dict[str, pd.DataFrame]:
    """The divisions, turnout and results frames of a snapshot directory, typed."""
    import pandas as pd

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
