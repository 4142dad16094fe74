"""One scrape of the portal into a snapshot directory: fetch, crawl, normalise, write.

Also rebuilds a snapshot from the raw archive alone (after a parser fix), by crawling the
archived pages instead of the portal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from etl import config
from etl.crawl import ContestCrawl, SourceSpec, crawl_contests, fetch_election
from etl.fetch import FetchedPage, utc_now
from etl.normalise import (
    build_frames,
    portal_time,
    read_snapshot_meta,
    snapshot_id_for,
    write_snapshot,
)
from etl.records import PageRef

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
    crawls = crawl_contests(spec, lang, election_id, selected, concurrency=concurrency,
                            processes=processes)
    meta = snapshot_meta(spec.base_url, lang, election_id, election_page, crawls, fetched_at)
    frames = build_frames(meta["snapshot_id"], election_id, crawls)
    write_snapshot(out_dir, frames, meta)
    seconds = time.perf_counter() - started
    log.info("snapshot %s: %d pages (%d not modified), %d failed, rows %s, %.2fs",
             meta["snapshot_id"], meta["pages_fetched"] + meta["pages_not_modified"],
             meta["pages_not_modified"], meta["pages_failed"], frames.row_counts(), seconds)
    return ScrapeSummary(out_dir, meta, frames.row_counts(), seconds)


def snapshot_meta(
    portal: str, lang: str, election_id: str, election_page: FetchedPage,
    crawls: Sequence[ContestCrawl], fetched_at: str, *,
    portal_updated_at: datetime | None = None,
) -> dict[str, Any]:
    """The `snapshot.json` contents for a set of crawled contests.

    `portal_updated_at`: the portal time when `crawls` carry no divisions (staged batches
    keep only their pages; their divisions are already frames).
    """
    pages = [PageRef(election_page.url, election_page.sha256, 200)]
    pages += [page for crawl in crawls for page in crawl.pages]
    failures = [f for crawl in crawls for f in crawl.failures]
    updated = portal_updated_at or portal_time(crawls)
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
        "failures": sorted(
            ({"url": f.url, "reason": f.reason, "status": f.status, "contest_id": crawl.contest_id}
             for crawl in crawls for f in crawl.failures),
            key=lambda failure: str(failure["url"]),
        ),
        "pages": [{"url": p.url, "sha256": p.sha256, "status": p.status}
                  for p in sorted(pages, key=lambda page: page.url)],
    }

