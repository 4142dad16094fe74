"""Reuse of parsed division pages between cycles when only their `updated` stamp changed.

The portal re-stamps every page at each update, although most precinct pages say the same
thing as before. A page is keyed by the sha256 of its URL and its body with the one
`<time class="updated" datetime="…">…</time>` element cut out; when the last *completed*
cycle parsed a page with the same key, its records are reused with the new stamp instead
of parsing the page again. Everything outside the stamp element is byte for byte the same,
so the parser of record would read the same records; the stamp is read from the element
exactly as `etl.parse` reads it. A page with no such element, or more than one `<time`,
is always parsed.

The cache lives beside the last completed cycle's state, `state/<election>.pages.parquet`
(columns contest_id, url, page_key, page — the records as JSON), and names the parser
version (a digest of the parsing modules' source): after a parser fix nothing is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from etl.parse import BISHKEK_TZ
from etl.records import DivisionPage, PageRecord, page_record

log = logging.getLogger(__name__)

_STAMP = re.compile(rb'<time class="updated" datetime="([0-9T:+\-.Z ]+)">[^<]*</time>')
_TIME_OPEN = re.compile(rb"<time", re.I)
_VERSION_KEY = b"cec.parser_version"
_PARSING_MODULES = ("parse.py", "fastparse.py", "records.py", "pagecache.py")


@dataclass(frozen=True)
class PageKey:
    """A page's key (URL + body without its stamp) and the stamp it carries."""

    key: str
    stamp: datetime


@dataclass(frozen=True)
class PageCache:
    """Cache entries (page key -> records as JSON) of the last completed cycle."""

    entries: dict[str, str]


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


def cache_entry(keyed: PageKey, page: DivisionPage, record: PageRecord | None = None) -> str | None:
    """The page's records as a cache entry, or None when its stamp is not the keyed one.

    `record` is the page's `page_record`, when the caller has made it already.
    """
    if repr(page.portal_updated_at) != repr(keyed.stamp):
        return None  # the parser took its time from elsewhere: do not reuse this page
    record = record or page_record(page)
    return json.dumps([
        record.declared_id, record.level, record.name, record.has_results_table,
        record.protocol, record.lines, record.children, record.fractional_counts,
    ], ensure_ascii=False)


def reuse(page_cache: PageCache, keyed: PageKey) -> PageRecord | None:
    """The cached records of this page with its new stamp, or None."""
    entry = page_cache.entries.get(keyed.key)
    if entry is None:
        return None
    declared_id, level, name, has_results, protocol, lines, children, fractional = json.loads(entry)
    return PageRecord(
        declared_id, level, name, keyed.stamp.isoformat(), tuple(protocol), has_results,
        tuple(map(tuple, lines)), tuple(map(tuple, children)), tuple(map(tuple, fractional)))


def cache_path(state_dir: Path, election_id: str) -> Path:
    """Where the last completed cycle's parsed pages are kept."""
    return state_dir / f"{election_id}.pages.parquet"


def write_pages(path: Path, rows: Iterable[tuple[str, str, str, str]]) -> Path:
    """Write (contest_id, url, page_key, page) rows as a cache file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[str]] = {"contest_id": [], "url": [], "page_key": [], "page": []}
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            columns[column].append(value)
    table = pa.table(columns).replace_schema_metadata({_VERSION_KEY: parser_version().encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def read_pages(path: Path, contests: Sequence[str] | None = None) -> PageCache | None:
    """The cache file's entries (of `contests` only, if given); None if absent or stale."""
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
        table = pq.ParquetFile(path).read(columns=["contest_id", "page_key", "page"])
    except (OSError, ValueError) as exc:
        log.warning("page cache %s unreadable, parsing every page: %s", path, exc)
        return None
    keys = table.column("page_key").to_pylist()
    pages = table.column("page").to_pylist()
    if not contests:
        return PageCache(dict(zip(keys, pages, strict=True)))
    # In Python, not Table.filter: that imports pandas (~0.6 s) before the crawl can start.
    wanted = set(contests)
    return PageCache({key: page for contest, key, page in zip(
        table.column("contest_id").to_pylist(), keys, pages, strict=True) if contest in wanted})
