"""One scrape of the portal into a snapshot directory: fetch, crawl, normalise, write.

Also rebuilds a snapshot from the raw archive alone (after a parser fix), by crawling the
archived pages instead of the portal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from etl import config
from etl.crawl import ContestCrawl, SourceSpec, crawl_contests, fetch_election
from etl.fetch import REFUSED, FetchedPage, utc_now
from etl.normalise import (
    CrawlTable,
    SnapshotFrames,
    build_frames,
    portal_time,
    read_snapshot_meta,
    snapshot_id_for,
    write_snapshot,
)
from etl.records import PageRef, SeenPage

log = logging.getLogger(__name__)


class UnknownContestError(ValueError):
    """A contest asked for that the election page does not list."""


@dataclass(frozen=True)
class ScrapeSummary:
    """What one scrape produced, for the CLI and the DAG."""

    out_dir: Path
    meta: dict[str, Any]
    rows: dict[str, int]
    seconds: float

    @property
    def snapshot_id(self) -> str:
        """The snapshot's deterministic id."""
        return str(self.meta["snapshot_id"])


def scrape(
    portal: str,
    election_id: str,
    out_dir: Path,
    *,
    contests: Sequence[str] | None = None,
    lang: str | None = None,
    archive_root: Path | None = None,
    concurrency: int | None = None,
    processes: int | None = None,
) -> ScrapeSummary:
    """Scrape one election from the portal into `out_dir`; return the summary."""
    spec = SourceSpec(
        base_url=portal,
        archive_root=archive_root or config.raw_dir(),
        pool_size=concurrency or config.concurrency(),
    )
    return _snapshot(spec, election_id, out_dir, contests, lang or config.portal_lang(),
                     concurrency or config.concurrency(), processes or config.crawl_processes())


def rebuild_from_archive(
    snapshot_dir: Path, out_dir: Path, *, archive_root: Path | None = None,
    processes: int | None = None,
) -> ScrapeSummary:
    """Re-parse a past snapshot's archived pages into `out_dir`, without the portal."""
    meta = read_snapshot_meta(snapshot_dir)
    spec = SourceSpec(
        base_url=meta["portal"],
        archive_root=archive_root or config.raw_dir(),
        archived_pages=tuple((p["url"], p["sha256"]) for p in meta["pages"]),
    )
    return _snapshot(spec, meta["election_id"], out_dir, meta["contests"], meta["lang"],
                     concurrency=4, processes=processes or config.crawl_processes(),
                     fetched_at=meta["fetched_at"])


def _snapshot(
    spec: SourceSpec,
    election_id: str,
    out_dir: Path,
    contests: Sequence[str] | None,
    lang: str,
    concurrency: int,
    processes: int,
    fetched_at: str | None = None,
) -> ScrapeSummary:
    started = time.perf_counter()
    fetched_at = fetched_at or utc_now()
    source = spec.open()
    try:
        election_page, election = fetch_election(source, lang, election_id)
    finally:
        source.close()
    listed = [link.segment for link in election.contests]
    if contests:
        unknown = sorted(set(contests) - set(listed))
        if unknown:
            raise UnknownContestError(
                f"contest(s) {', '.join(unknown)} not listed on {election_page.url} "
                f"(it lists {', '.join(listed)})"
            )
        selected = [c for c in listed if c in set(contests)]
    else:
        selected = listed
    crawled = crawl_contests(spec, lang, election_id, selected, concurrency=concurrency,
                             processes=processes)
    meta, frames = assemble(spec.base_url, lang, election_id, election_page, crawled, fetched_at)
    write_snapshot(out_dir, frames, meta)
    seconds = time.perf_counter() - started
    log.info("snapshot %s: %d pages (%d not modified), %d failed, rows %s, %.2fs",
             meta["snapshot_id"], meta["pages_fetched"] + meta["pages_not_modified"],
             meta["pages_not_modified"], meta["pages_failed"], frames.row_counts(), seconds)
    return ScrapeSummary(out_dir, meta, frames.row_counts(), seconds)


def assemble(
    portal: str, lang: str, election_id: str, election_page: FetchedPage | SeenPage,
    crawled: CrawlTable, fetched_at: str,
) -> tuple[dict[str, Any], SnapshotFrames]:
    """The one path from crawled contests to a snapshot: its metadata and its frames.

    `etl scrape`, `etl reprocess` and the cycle's assemble stage all go through here, so a
    snapshot is the same whichever way it was made.
    """
    meta = snapshot_meta(portal, lang, election_id, election_page, crawled, fetched_at)
    return meta, build_frames(meta["snapshot_id"], election_id, crawled)


def snapshot_meta(
    portal: str, lang: str, election_id: str, election_page: FetchedPage | SeenPage,
    crawled: CrawlTable, fetched_at: str,
) -> dict[str, Any]:
    """The `snapshot.json` contents for a set of crawled contests."""
    crawls = crawled.contests
    table = crawled.pages
    pages = [PageRef(election_page.url, election_page.sha256, 200)]
    pages += [PageRef(url, sha256, 200) for url, sha256 in zip(
        table.column("url").to_pylist(), table.column("sha256").to_pylist(), strict=True)]
    failures = [f for crawl in crawls for f in crawl.failures]
    updated = portal_time(crawled)
    return {
        "snapshot_id": snapshot_id_for(election_id, updated, pages, failures),
        "election_id": election_id,
        "portal": portal,
        "lang": lang,
        "contests": [crawl.contest_id for crawl in crawls],
        "portal_updated_at": updated.isoformat() if updated else None,
        "fetched_at": fetched_at,
        "pages_fetched": sum(c.pages_fetched for c in crawls) + (not election_page.not_modified),
        "pages_not_modified": sum(c.pages_not_modified for c in crawls)
        + election_page.not_modified,
        "pages_failed": len(failures),
        # How the division pages were read (the cycle summary shows the fallbacks).
        "pages_parsed": {
            "fast": sum(c.pages_parsed_fast for c in crawls),
            "fallback": sum(c.pages_parsed_fallback for c in crawls),
            "reused": sum(c.pages_reused for c in crawls),
        },
        "failures": sorted(
            ({"url": f.url, "reason": f.reason, "status": f.status, "contest_id": crawl.contest_id}
             for crawl in crawls for f in crawl.failures),
            key=lambda failure: str(failure["url"]),
        ),
        "pages": [{"url": p.url, "sha256": p.sha256, "status": p.status}
                  for p in sorted(pages, key=lambda page: page.url)],
        "fractional_counts": fractional_counts(table),
        "limits": crawl_limits(crawls),
    }


def fractional_counts(pages: pa.Table) -> list[dict[str, Any]]:
    """Count cells that held a fraction, page by page (few: only their rows are read)."""
    cells = pages.column("fractional_counts").combine_chunks()
    with_cells = np.flatnonzero(cells.value_lengths().fill_null(0).to_numpy())
    rows = pages.select(["contest_id", "division_id", "url", "fractional_counts"]).take(
        pa.array(with_cells, pa.int64())).to_pylist()
    return [{"contest_id": row["contest_id"], "division_id": row["division_id"],
             "url": row["url"], "figure": cell["figure"], "text": cell["text"]}
            for row in rows for cell in row["fractional_counts"]]


def crawl_limits(crawls: Sequence[ContestCrawl]) -> dict[str, Any]:
    """What the crawl's safety limits refused or capped, for snapshot.json and the summary.

    `refused_pages`: pages lost to a limit (too large, a redirect off the portal's host,
    the page cap); they are also failures. `refused_links`: links not followed without
    losing a page (query-string variants of a path already fetched).
    """
    lost = [{"url": f.url, "reason": f.reason.removeprefix(REFUSED), "contest_id": c.contest_id}
            for c in crawls for f in c.failures if f.reason.startswith(REFUSED)]
    links = [{"url": f.url, "reason": f.reason.removeprefix(REFUSED), "contest_id": c.contest_id}
             for c in crawls for f in c.refused]
    return {
        "max_page_bytes": config.max_page_bytes(),
        "max_pages": config.max_pages(),
        "max_query_variants": config.max_query_variants(),
        "refused_pages": sorted(lost, key=lambda r: r["url"]),
        "refused_links": sorted(links, key=lambda r: r["url"]),
    }


def limits_summary(meta: dict[str, Any]) -> list[str]:
    """Lines for a person: what was refused or capped (empty when nothing was)."""
    limits = meta.get("limits") or {}
    lines = []
    for key, what in (("refused_pages", "page refused"), ("refused_links", "link not followed")):
        entries = limits.get(key) or []
        for entry in entries[:10]:
            lines.append(f"{what}: {entry['url']}: {entry['reason']}")
        if len(entries) > 10:
            lines.append(f"… and {len(entries) - 10} more ({key} in snapshot.json)")
    return lines

