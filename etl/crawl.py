"""Discover an election's contests and crawl each contest's division tree.

Nothing about the portal's shape is hard-coded beyond SPEC.md's URL scheme for the
election page and a contest's root: contests come from the election page, divisions from
the links each page shows, at whatever depth.

The crawl is a pipeline: threads fetch (and archive) pages, a pool of processes parses
them, and the links a parsed page shows are fetched next. The HTML parser, not the
network, bounds a full scrape, so parsing is what gets the cores.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
from collections.abc import Sequence
from concurrent.futures import (
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


@dataclass
class _ContestProgress:
    """What one contest's crawl has gathered so far (mutable, private to the crawl loop)."""

    # Each division with its place in the tree (the link positions from the root down),
    # so the snapshot lists divisions in the portal's own order, whatever order they arrived.
    divisions: list[tuple[tuple[int, ...], CrawledDivision]] = field(default_factory=list)
    failures: list[FetchFailure] = field(default_factory=list)
    pages: list[PageRef] = field(default_factory=list)
    fetched: int = 0
    not_modified: int = 0


@dataclass(frozen=True)
class _Visit:
    """A division page to fetch, and the id and parent it will get in its contest."""

    contest_id: str
    path: str
    division_id: str | None  # None for a contest's root: the page declares its id
    parent_id: str | None
    order: tuple[int, ...] = ()


class _InlineParser(Executor):
    """Parses in the calling thread when no parser processes are wanted."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future: Future[DivisionPage] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the crawl loop like a worker's exception
            future.set_exception(exc)
        return future


def _parser_pool(processes: int) -> Executor:
    if processes <= 1:
        return _InlineParser()
    # Fork, and before any fetch thread exists: workers then start fast and clean.
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork"))
    for warm in [pool.submit(time.sleep, 0) for _ in range(processes)]:
        warm.result()
    return pool


def crawl_contests(
    spec: SourceSpec,
    lang: str,
    election_id: str,
    contest_ids: Sequence[str],
    *,
    concurrency: int,
    processes: int,
) -> list[ContestCrawl]:
    """Crawl contests from their root pages down every link.

    `concurrency` pages are fetched at a time; `processes` parser processes (1 = parse in
    this process). A page that cannot be fetched or parsed is recorded as a failure and
    the crawl goes on; its body, if any, is already in the raw archive.
    """
    started = time.perf_counter()
    progress = {contest_id: _ContestProgress() for contest_id in contest_ids}
    seen: set[str] = set()
    parser = _parser_pool(processes)
    source = spec.open()
    fetching: dict[Future[FetchedPage], _Visit] = {}
    parsing: dict[Future[DivisionPage], tuple[_Visit, FetchedPage]] = {}
    # Finished futures arrive here, so each one costs O(1) (`wait()` on thousands of
    # pending futures would rescan them all every time).
    finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as fetcher:

            def fetch(visit: _Visit) -> None:
                if visit.path not in seen:
                    seen.add(visit.path)
                    future = fetcher.submit(source.fetch, visit.path)
                    fetching[future] = visit
                    future.add_done_callback(finished.put)

            for contest_id in contest_ids:
                fetch(_Visit(contest_id, contest_path(lang, election_id, contest_id), None, None))
            while fetching or parsing:
                future = finished.get()
                if future in fetching:
                    visit = fetching.pop(future)
                    try:
                        page = future.result()
                    except FetchError as exc:
                        progress[visit.contest_id].failures.append(
                            FetchFailure(exc.url, exc.reason, exc.status))
                        continue
                    parsed = parser.submit(parse_division, page.body, page.url)
                    parsing[parsed] = (visit, page)
                    parsed.add_done_callback(finished.put)
                else:
                    visit, page = parsing.pop(future)
                    contest = progress[visit.contest_id]
                    try:
                        division = future.result()
                    except PageParseError as exc:
                        contest.failures.append(FetchFailure(exc.url, str(exc), 200))
                        continue
                    division_id = _record(contest, visit, page, division)
                    for position, child in enumerate(division.children):
                        fetch(_Visit(visit.contest_id, child.href, child.segment, division_id,
                                     (*visit.order, position)))
    finally:
        source.close()
        parser.shutdown(cancel_futures=True)
    crawls = []
    for contest_id, contest in progress.items():
        log.info("crawled %s/%s: %d divisions, %d fetched, %d not modified, %d failed",
                 election_id, contest_id, len(contest.divisions), contest.fetched,
                 contest.not_modified, len(contest.failures))
        in_tree_order = tuple(division for _, division in sorted(contest.divisions,
                                                                 key=lambda item: item[0]))
        crawls.append(ContestCrawl(election_id, contest_id, in_tree_order,
                                   tuple(contest.failures), tuple(contest.pages), contest.fetched,
                                   contest.not_modified))
    log.info("crawled %d contests of %s in %.2fs", len(crawls), election_id,
             time.perf_counter() - started)
    return crawls


def _record(contest: _ContestProgress, visit: _Visit, page: FetchedPage, division: DivisionPage) -> str:
    """Add a parsed page to its contest; return the division's id."""
    if page.not_modified:
        contest.not_modified += 1
    else:
        contest.fetched += 1
    contest.pages.append(PageRef(page.url, page.sha256, 200))
    # A contest's root declares its own id; every other division is its URL segment.
    division_id = visit.division_id or division.declared_id or visit.contest_id
    contest.divisions.append((visit.order, CrawledDivision(
        visit.contest_id, division_id, visit.parent_id, page.url, page.sha256, division)))
    return division_id
