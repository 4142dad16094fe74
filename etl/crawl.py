"""Discover an election's contests and crawl each contest's division tree.

Nothing about the portal's shape is hard-coded beyond SPEC.md's URL scheme for the
election page and a contest's root: contests come from the election page, divisions from
the links each page shows, at whatever depth. Work spreads over processes by contest
(the HTML parser, not the network, bounds a crawl) and over threads within a contest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from etl.archive import RawArchive
from etl.fetch import FetchedPage, FetchError, PortalClient
from etl.parse import PageParseError, parse_division, parse_election
from etl.records import CrawledDivision, DivisionPage, ElectionPage, FetchFailure, PageRef

log = logging.getLogger(__name__)


class PageSource(Protocol):
    """Where pages come from: the live portal, or the raw archive when reprocessing."""

    def fetch(self, path: str) -> FetchedPage: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """A picklable recipe for a `PageSource`, so crawl processes can build their own.

    `archived_pages` (URL -> sha256) switches the source from the portal to the archive.
    """

    base_url: str
    archive_root: Path
    pool_size: int = 16
    archived_pages: tuple[tuple[str, str], ...] | None = None

    def open(self) -> PageSource:
        """Build the source this spec describes."""
        archive = RawArchive(self.archive_root)
        if self.archived_pages is not None:
            return ArchiveSource(self.base_url, archive, dict(self.archived_pages))
        return PortalClient(self.base_url, archive, pool_size=self.pool_size)


class ArchiveSource:
    """Serves a past snapshot's pages from the raw archive, never touching the portal."""

    def __init__(self, base_url: str, archive: RawArchive, pages: dict[str, str]) -> None:
        self.base_url = base_url.rstrip("/")
        self.archive = archive
        self.pages = pages

    def fetch(self, path: str) -> FetchedPage:
        """The archived body the snapshot used for this path."""
        url = path if path.startswith("http") else f"{self.base_url}/{path.lstrip('/')}"
        sha256 = self.pages.get(url)
        if sha256 is None:
            raise FetchError(url, "not in the archived snapshot")
        return FetchedPage(url, 200, self.archive.read(sha256), sha256, not_modified=True)

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class ContestCrawl:
    """Everything one contest's crawl produced: parsed divisions and what failed."""

    election_id: str
    contest_id: str
    divisions: tuple[CrawledDivision, ...]
    failures: tuple[FetchFailure, ...]
    pages: tuple[PageRef, ...]
    pages_fetched: int
    pages_not_modified: int


def election_path(lang: str, election_id: str) -> str:
    """Path of an election's page (SPEC.md section A)."""
    return f"/{lang}/results/{election_id}/"


def contest_path(lang: str, election_id: str, contest_id: str) -> str:
    """Path of a contest's root division page (SPEC.md section A)."""
    return f"/{lang}/results/{election_id}/{contest_id}/"


def fetch_election(source: PageSource, lang: str, election_id: str) -> tuple[FetchedPage, ElectionPage]:
    """Fetch and parse the election page; errors propagate (nothing to crawl without it)."""
    page = source.fetch(election_path(lang, election_id))
    return page, parse_election(page.body, page.url)


def crawl_contest(
    spec: SourceSpec, lang: str, election_id: str, contest_id: str, concurrency: int
) -> ContestCrawl:
    """Crawl one contest from its root page down every link, `concurrency` pages at a time."""
    started = time.perf_counter()
    source = spec.open()
    divisions: list[CrawledDivision] = []
    failures: list[FetchFailure] = []
    pages: list[PageRef] = []
    fetched = not_modified = 0
    seen: set[str] = set()

    def visit(path: str) -> tuple[FetchedPage, DivisionPage]:
        page = source.fetch(path)
        return page, parse_division(page.body, page.url)

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            # Each pending visit remembers the division id and parent it will get.
            pending: dict[Future[tuple[FetchedPage, DivisionPage]], tuple[str | None, str | None]] = {}

            def submit(path: str, division_id: str | None, parent_id: str | None) -> None:
                if path in seen:
                    return
                seen.add(path)
                pending[pool.submit(visit, path)] = (division_id, parent_id)

            submit(contest_path(lang, election_id, contest_id), None, None)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    division_id, parent_id = pending.pop(future)
                    try:
                        fetched_page, division = future.result()
                    except FetchError as exc:
                        failures.append(FetchFailure(exc.url, exc.reason, exc.status))
                        continue
                    except PageParseError as exc:
                        failures.append(FetchFailure(exc.url, str(exc), 200))
                        continue
                    if fetched_page.not_modified:
                        not_modified += 1
                    else:
                        fetched += 1
                    pages.append(PageRef(fetched_page.url, fetched_page.sha256, 200))
                    if division_id is None:  # the contest's root declares its own id
                        division_id = division.declared_id or contest_id
                    divisions.append(
                        CrawledDivision(contest_id, division_id, parent_id, fetched_page.url,
                                        fetched_page.sha256, division)
                    )
                    for child in division.children:
                        submit(child.href, child.segment, division_id)
    finally:
        source.close()
    log.info(
        "crawled %s/%s: %d divisions, %d fetched, %d not modified, %d failed in %.2fs",
        election_id, contest_id, len(divisions), fetched, not_modified, len(failures),
        time.perf_counter() - started,
    )
    return ContestCrawl(election_id, contest_id, tuple(divisions), tuple(failures),
                        tuple(pages), fetched, not_modified)


def crawl_contests(
    spec: SourceSpec,
    lang: str,
    election_id: str,
    contest_ids: Sequence[str],
    *,
    concurrency: int,
    processes: int,
) -> list[ContestCrawl]:
    """Crawl several contests, spread over `processes` worker processes by contest."""
    if processes <= 1 or len(contest_ids) <= 1:
        return [crawl_contest(spec, lang, election_id, c, concurrency) for c in contest_ids]
    per_process = max(1, concurrency // processes)
    with ProcessPoolExecutor(max_workers=processes) as pool:
        futures = [
            pool.submit(crawl_contest, spec, lang, election_id, c, per_process) for c in contest_ids
        ]
        return [future.result() for future in futures]
