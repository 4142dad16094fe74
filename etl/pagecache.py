"""Reuse of parsed division pages between cycles when only their `updated` stamp changed.

The portal re-stamps every page at each update, although most precinct pages say the same
thing as before. A page is keyed by the sha256 of its URL and its body with the one
`<time class="updated" datetime="…">…</time>` element cut out; when the last *completed*
cycle parsed a page with the same key, its records are reused with the new stamp instead
of parsing the page again. Everything outside the stamp element is byte for byte the same,
so the parser of record would read the same records; the stamp is read from the element
exactly as `etl.parse` reads it. A page with no such element, or more than one `<time`,
is always parsed.

The cache lives beside the last completed cycle's state, `state/<election>.pages.parquet`:
the crawl table's rows of the pages that can be reused (columns contest_id, page_key and
the records' columns of `etl.normalise.PAGE_SCHEMA`), named with the parser version (a
digest of the parsing modules' source): after a parser fix nothing is reused. A reused
page never becomes Python objects: a crawl worker answers with the cached row's number,
and the crawl takes those rows from the cache's columns (`with_reused`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from itertools import pairwise
from pathlib import Path

import pyarrow as pa

from etl.normalise import PAGE_SCHEMA
from etl.parse import BISHKEK_TZ
from etl.records import DivisionPage, LinkValues

log = logging.getLogger(__name__)

_STAMP = re.compile(rb'<time class="updated" datetime="([0-9T:+\-.Z ]+)">[^<]*</time>')
_TIME_OPEN = re.compile(rb"<time", re.I)
_VERSION_KEY = b"cec.parser_version"
_PARSING_MODULES = ("parse.py", "fastparse.py", "records.py", "pagecache.py", "normalise.py")

# What a crawled page's row says of where and when it was read: taken from the page
# fetched now. The other columns are its records, which a reused page takes from the cache.
PLACE_COLUMNS = ("contest_id", "division_id", "parent_id", "url", "sha256", "portal_updated_at")
RECORD_COLUMNS = tuple(name for name in PAGE_SCHEMA.names if name not in PLACE_COLUMNS)
# The body each page was read from (URL, digest, stamp) comes along: a page the portal
# answers 304 for has that very body, so its row is found without reading the body again.
_CACHE_SCHEMA = pa.schema([*(PAGE_SCHEMA.field(name) for name in ("contest_id", "url", "sha256",
                                                                  "portal_updated_at")),
                           pa.field("page_key", pa.string()),
                           *(PAGE_SCHEMA.field(name) for name in RECORD_COLUMNS)])


@dataclass(frozen=True)
class PageKey:
    """A page's key (URL + body without its stamp) and the stamp it carries."""

    key: str
    stamp: datetime


@dataclass(frozen=True)
class PageCache:
    """The pages the last completed cycle read, for reuse.

    `rows` maps a page key to its row of `records` (RECORD_COLUMNS); `children` and
    `declared_ids` are a row's child links and declared id, which the crawl follows
    without building the row's records. `by_url`, `sha256s`, `stamps` and `keys` say
    which body each row was read from (see `reused_unchanged`).
    """

    rows: dict[str, int]
    records: pa.Table
    children: dict[int, tuple[LinkValues, ...]]
    declared_ids: list[str | None]
    by_url: dict[str, int]
    sha256s: list[str]
    stamps: list[str]
    keys: list[str]


@cache
def parser_version() -> str:
    """Digest of the parsing modules' source: cached records are only valid for it."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for name in _PARSING_MODULES:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:16]


def page_key(url: str, body: bytes) -> PageKey | None:
    """The page's key and stamp, or None when the page cannot be keyed safely."""
    match = _STAMP.search(body)
    if match is None or len(_TIME_OPEN.findall(body)) != 1:
        return None
    try:
        stamp = _stamp(match.group(1).decode("ascii"))
    except ValueError:
        return None  # the parser of record reports the bad time
    digest = hashlib.sha256(url.encode())
    digest.update(b"\n")
    digest.update(body[:match.start()])
    digest.update(body[match.end():])
    return PageKey(digest.hexdigest(), stamp)


def _stamp(raw: str) -> datetime:
    # As etl.parse reads `<time datetime>`: ISO 8601, Bishkek time when it has no offset.
    value = datetime.fromisoformat(raw.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=BISHKEK_TZ)


def cacheable(keyed: PageKey, page: DivisionPage) -> bool:
    """Whether a parsed page may be reused under its key: only when the parser of record
    took its time from the keyed stamp element (not from elsewhere on the page)."""
    return repr(page.portal_updated_at) == repr(keyed.stamp)


def reused_row(page_cache: PageCache, keyed: PageKey) -> int | None:
    """The cache's row of this page's records, or None when it has to be parsed."""
    return page_cache.rows.get(keyed.key)


def reused_unchanged(page_cache: PageCache, url: str, sha256: str) -> tuple[int, str, str] | None:
    """The cache's row, key and stamp of a page whose body is the one the last completed
    cycle read at this URL (the portal answered 304): what `page_key` and `reused_row`
    would give for that body, without reading it."""
    row = page_cache.by_url.get(url)
    if row is None or page_cache.sha256s[row] != sha256:
        return None
    return row, page_cache.keys[row], page_cache.stamps[row]


def with_reused(parsed: pa.Table, page_cache: PageCache, rows: Sequence[int],
                places: Mapping[str, Sequence[str | None]], order: Sequence[int]) -> pa.Table:
    """Crawl-table rows (PAGE_SCHEMA) in `order`: an index below `parsed`'s length is that
    row of `parsed` (pages parsed this cycle), index `len(parsed) + i` the i-th reused
    page: its records from the cache's row `rows[i]`, its place in this crawl
    (PLACE_COLUMNS: contest, ids, URL, digest and the stamp as ISO 8601 text) from
    `places[...][i]`.

    The cache's rows are taken first, then put in order with the parsed ones: a take from
    the parsed pages and the whole cache concatenated would copy the whole cache (Arrow
    joins a column's chunks before taking), once per contest (kg2021's re-stamp: 37
    copies of 5,031 pages' records, 0.27 s of the crawl's end; now 0.01 s)."""
    import numpy as np  # not at import: the crawl forks its workers before numpy is needed

    index = np.asarray(order, dtype=np.int64)
    cached = page_cache.records.select(RECORD_COLUMNS).take(np.asarray(rows, dtype=np.int64))
    # Row `len(parsed) + i` of the two together is the i-th reused page, as `order` says.
    records = pa.concat_tables([parsed.select(RECORD_COLUMNS), cached]).take(index)
    columns = {name: records.column(name) for name in RECORD_COLUMNS}
    for name in PLACE_COLUMNS:
        columns[name] = pa.chunked_array(
            [*parsed.column(name).chunks, pa.array(places[name], pa.string())],
            type=pa.string()).take(index)
    return pa.Table.from_arrays([columns[name] for name in PAGE_SCHEMA.names], schema=PAGE_SCHEMA)


def cache_path(state_dir: Path, election_id: str) -> Path:
    """Where the last completed cycle's parsed pages are kept."""
    return state_dir / f"{election_id}.pages.parquet"


def write_pages(path: Path, pages: pa.Table, page_keys: Sequence[str | None]) -> Path:
    """Write the crawled pages (PAGE_SCHEMA rows) that have a key as a cache file, atomically.

    `page_keys` has one entry per row of `pages`: its key, or None if it cannot be reused.
    """
    import pyarrow.parquet as pq

    keep = [index for index, key in enumerate(page_keys) if key is not None]
    # Every page keyed (the common case): no copy of the table.
    kept = pages if len(keep) == pages.num_rows else pages.take(pa.array(keep, pa.int64()))
    columns = {name: kept.column(name) for name in _CACHE_SCHEMA.names if name != "page_key"}
    columns["page_key"] = pa.array([key for key in page_keys if key is not None], pa.string())
    table = pa.Table.from_arrays([columns[name] for name in _CACHE_SCHEMA.names],
                                 schema=_CACHE_SCHEMA.with_metadata(
                                     {_VERSION_KEY: parser_version().encode()}))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def read_pages(path: Path, contests: Sequence[str] | None = None) -> PageCache | None:
    """The cache file's pages (of `contests` only, if given); None if absent or stale."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        schema = pq.read_schema(path)
        version = (schema.metadata or {}).get(_VERSION_KEY, b"").decode()
        if version != parser_version():
            log.info("page cache %s is from parser version %s, not %s: not reused", path,
                     version or "?", parser_version())
            return None
        # ParquetFile, not read_table(filters=…): that imports pyarrow.dataset (~0.2 s)
        # before the crawl starts.
        table = pq.ParquetFile(path).read()
        if not table.schema.equals(_CACHE_SCHEMA):
            raise ValueError(f"columns {table.schema.names}, not those of this version")
        # Parquet names a list's items `element`, the crawl table `item`: the same type
        # under one name, so cached rows concatenate with freshly parsed ones.
        # One chunk per column (one per row group as read): `with_reused` then takes a
        # contest's rows without Arrow joining the chunks again on every take.
        table = table.cast(_CACHE_SCHEMA).combine_chunks()
        children = _children_by_row(table.column("children"))
    except (OSError, ValueError, pa.ArrowException) as exc:
        log.warning("page cache %s unreadable, parsing every page: %s", path, exc)
        return None
    keys = table.column("page_key").to_pylist()
    urls = table.column("url").to_pylist()
    # In Python, not Table.filter: that imports pandas (~0.6 s) before the crawl can start.
    wanted = set(contests) if contests else None
    rows, by_url = {}, {}
    for row, (contest, key, url) in enumerate(zip(table.column("contest_id").to_pylist(), keys,
                                                  urls, strict=True)):
        if wanted is None or contest in wanted:
            rows[key] = row
            by_url[url] = row
    return PageCache(rows, table, children, table.column("declared_id").to_pylist(), by_url,
                     table.column("sha256").to_pylist(),
                     table.column("portal_updated_at").to_pylist(), keys)


def _children_by_row(column: pa.ChunkedArray) -> dict[int, tuple[LinkValues, ...]]:
    """Each row's child links (only rows that have some: most pages are precincts)."""
    children: dict[int, tuple[LinkValues, ...]] = {}
    base = 0
    for chunk in column.chunks:
        if not isinstance(chunk, pa.ListArray) or chunk.null_count:
            raise ValueError("a page without a list of child links")
        # Offsets index `values` (not `flatten()`, which drops what a slice leaves out).
        links = list(zip(*(field.to_pylist() for field in chunk.values.flatten()), strict=True))
        offsets = chunk.offsets.to_pylist()
        for row, (start, end) in enumerate(pairwise(offsets)):
            if end > start:
                children[base + row] = tuple(links[start:end])
        base += len(chunk)
    return children
