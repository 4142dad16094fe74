"""Discover an election's contests and crawl each contest's division tree.

Nothing about the portal's shape is hard-coded beyond SPEC.md's URL scheme for the
election page and a contest's root: contests come from the election page, divisions from
the links each page shows, at whatever depth.

Work is spread over worker processes in small batches of pages: a worker fetches (and
archives) each page of its batch with a few threads, parses it (or reuses the records of
a page that changed only its stamp), and hands back the page's records as plain values
(`PageRecord`) without its body; the links it shows become the next batches. Fetching and
parsing both go where the cores are; the coordinating process only keeps the books and
puts the records into columns as they come, a few thousand pages at a time
(`etl.normalise.CrawlTable`, in tree order at the end).
"""

from __future__ import annotations

import collections
import gc
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

import pyarrow as pa

from etl import config
from etl.archive import RawArchive, shared_archive
from etl.fastparse import parse_division_page
from etl.fetch import REFUSED, DeadlineExceeded, FetchedPage, FetchError, PortalClient, absolute_url
from etl.forked import die_with_parent
from etl.normalise import CrawlTable, crawl_table
from etl.pagecache import (
    PLACE_COLUMNS,
    PageCache,
    cacheable,
    page_key,
    reused_row,
    reused_unchanged,
    with_reused,
)
from etl.parse import PageParseError, parse_election
from etl.records import CrawledDivision, ElectionPage, FetchFailure, PageRecord, page_record

log = logging.getLogger(__name__)


class PageSource(Protocol):
    """Where pages come from: the live portal, or the raw archive when reprocessing."""

    def fetch(self, path: str) -> FetchedPage: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """A picklable recipe for a `PageSource`, so crawl processes can build their own.

    `archived_pages` (URL -> sha256) switches the source from the portal to the archive.
    `deadline` (epoch seconds) is when every fetch must have ended.
    """

    base_url: str
    archive_root: Path
    pool_size: int = 16
    archived_pages: tuple[tuple[str, str], ...] | None = None
    deadline: float | None = None

    def open(self) -> PageSource:
        """Build the source this spec describes."""
        archive = shared_archive(self.archive_root)
        if self.archived_pages is not None:
            return ArchiveSource(self.base_url, archive, dict(self.archived_pages))
        return PortalClient(self.base_url, archive, pool_size=self.pool_size,
                            deadline=self.deadline)


class ArchiveSource:
    """Serves a past snapshot's pages from the raw archive, never touching the portal."""

    def __init__(self, base_url: str, archive: RawArchive, pages: dict[str, str]) -> None:
        self.base_url = base_url.rstrip("/")
        self.archive = archive
        self.pages = pages

    def fetch(self, path: str) -> FetchedPage:
        """The archived body the snapshot used for this path."""
        url = absolute_url(self.base_url, path)
        sha256 = self.pages.get(url)
        if sha256 is None:
            raise FetchError(url, "not in the archived snapshot")
        return FetchedPage(url, 200, self.archive.read(sha256), sha256, not_modified=True,
                           encoding=self.archive.encoding_of(url, sha256))

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class ContestCrawl:
    """What one contest's crawl counted and what failed (its pages are rows of a `CrawlTable`)."""

    election_id: str
    contest_id: str
    failures: tuple[FetchFailure, ...]
    pages_fetched: int
    pages_not_modified: int
    # How the division pages were read: the lxml fast path, the parser of record after
    # the fast path gave up, or reused from the last completed cycle (stamp-only change).
    pages_parsed_fast: int = 0
    pages_parsed_fallback: int = 0
    pages_reused: int = 0
    # Each division page's key (see etl.pagecache), in the order of the contest's rows in
    # the crawl table; None for a page that cannot be reused. For the next cycle's cache.
    page_keys: tuple[str | None, ...] = ()
    # Links not followed by policy without losing a page (query-string variants of a path
    # already fetched): for the cycle summary, not coverage failures.
    refused: tuple[FetchFailure, ...] = ()


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


# How many child links one batch carries: small enough to keep every worker busy and
# the tree's next level flowing, large enough that process hand-offs cost little. A batch
# of pages fetched before is one pipeline (one round trip): 16 rather than 8 took the
# 100,000-precinct incremental crawl from 9.8-10.6 s to 8.9-9.3 s; kg2021's cycles the same
# or slightly faster (cold 4.63 -> 4.61 s, re-stamp 2.47 -> 2.37 s, medians of 3).
BATCH_SIZE = 16


_FAST, _FALLBACK, _REUSED = "fast", "fallback", "reused"
_READ_AS: tuple[str, ...] = (_FAST, _FALLBACK, _REUSED)


# How many divisions' records a contest's crawl keeps as Python objects before it puts
# them into columns: at 100,000 precincts those objects (a tuple, a name and two numbers
# per ballot line) were ~0.4 GB by the end of the crawl, the cycle's memory peak.
_COLUMNS_EVERY = 4096


@dataclass
class _ContestProgress:
    """What one contest's crawl has gathered so far (mutable, private to the crawl loop)."""

    # Each division's place in the tree (the link positions from the root down), so the
    # snapshot lists divisions in the portal's own order, whatever order they arrived.
    # Parsed pages: their records, in the order they arrived, in columns (`chunks`) but
    # for the last few. Reused pages: their row of the page cache and their place.
    orders: list[tuple[int, ...]] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    chunks: list[pa.Table] = field(default_factory=list)
    pending: list[CrawledDivision] = field(default_factory=list)
    reused_orders: list[tuple[int, ...]] = field(default_factory=list)
    reused_rows: list[int] = field(default_factory=list)
    reused_places: dict[str, list[str | None]] = field(
        default_factory=lambda: {name: [] for name in PLACE_COLUMNS})
    failures: list[FetchFailure] = field(default_factory=list)
    refused: list[FetchFailure] = field(default_factory=list)
    fetched: int = 0
    not_modified: int = 0
    read_as: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_READ_AS, 0))

    def add(self, order: tuple[int, ...], division: CrawledDivision, key: str | None) -> None:
        """Record a parsed division page at its place in the tree."""
        self.orders.append(order)
        self.keys.append(key)
        self.pending.append(division)
        if len(self.pending) >= _COLUMNS_EVERY:
            self._to_columns()

    def add_reused(self, order: tuple[int, ...], place: tuple[str | None, ...], row: int) -> None:
        """Record a reused division page (its row of the page cache) at its place."""
        self.reused_orders.append(order)
        self.reused_rows.append(row)
        for values, value in zip(self.reused_places.values(), place, strict=True):
            values.append(value)

    def divisions(self) -> int:
        """How many division pages were recorded."""
        return len(self.orders) + len(self.reused_orders)

    def _to_columns(self) -> None:
        if self.pending:
            self.chunks.append(crawl_table((), self.pending).pages)
            self.pending = []

    def pages(self, cache: PageCache | None) -> tuple[pa.Table, list[str | None]]:
        """Every division page recorded, in tree order (`PAGE_SCHEMA` rows), and their keys."""
        self._to_columns()
        parsed = (pa.concat_tables(self.chunks) if len(self.chunks) > 1 else
                  self.chunks[0] if self.chunks else crawl_table((), ()).pages)
        orders = self.orders + self.reused_orders
        in_tree_order = sorted(range(len(orders)), key=orders.__getitem__)
        keys = list(self.keys)
        if self.reused_rows:
            assert cache is not None
            keys.extend(cache.keys[row] for row in self.reused_rows)  # the key it was found by
            table = with_reused(parsed, cache, self.reused_rows, self.reused_places,
                                in_tree_order)
        else:
            table = parsed.take(pa.array(in_tree_order, pa.int64()))
        return table, [keys[index] for index in in_tree_order]


@dataclass(frozen=True)
class _Visit:
    """A division page to fetch, and the id and parent it will get in its contest."""

    contest_id: str
    path: str
    division_id: str | None  # None for a contest's root: the page declares its id
    parent_id: str | None
    order: tuple[int, ...] = ()


class _Outcome(NamedTuple):
    """What a worker made of one page: its records, its row of the page cache, or why
    there are none (a tuple: one crosses the process pipe for every page)."""

    url: str
    sha256: str | None
    not_modified: bool
    record: PageRecord | None  # a parsed page's
    failure: FetchFailure | None
    read_as: str | None = None  # fast / fallback / reused
    page_key: str | None = None  # see etl.pagecache; None when the page is not reusable
    reused_row: int | None = None  # a reused page's row of the cache
    stamp: str | None = None  # a reused page's new `updated` time (ISO 8601)


# The page source of a worker process, opened once by `_open_source`, the threads its
# batches fetch with (made once: a pool per batch started ~2,600 threads a cold cycle),
# and the records of the last completed cycle it may reuse (inherited when it forks).
_source: PageSource | None = None
_fetchers: ThreadPoolExecutor | None = None
_threads = 1
_cache: PageCache | None = None


def _open_source(spec: SourceSpec, threads: int = 1) -> None:
    global _source, _fetchers, _threads  # noqa: PLW0603 - per-process state of a pool worker
    _source = spec.open()
    _threads = threads
    if threads > 1:
        _fetchers = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")


def _close_source() -> None:
    global _source, _fetchers  # noqa: PLW0603
    if _fetchers is not None:
        _fetchers.shutdown(wait=True)
    _fetchers = None
    if _source is not None:
        _source.close()
    _source = None


def _fetch_each(paths: Sequence[str]) -> list[FetchedPage | FetchFailure]:
    return [_fetch(path) for path in paths]


def _fetch(path: str) -> FetchedPage | FetchFailure:
    assert _source is not None, "worker used before _open_source"
    try:
        return _source.fetch(path)
    except FetchError as exc:
        return FetchFailure(exc.url, exc.reason, exc.status)


def _parse(page: FetchedPage | FetchFailure) -> _Outcome:
    if isinstance(page, FetchFailure):
        return _Outcome(page.url, None, False, None, page)
    if page.not_modified and _cache is not None:
        # A 304: the body the last cycle read here, if the cache has its row (not read again).
        unchanged = reused_unchanged(_cache, page.url, page.sha256)
        if unchanged is not None:
            cached_row, cached_key, cached_stamp = unchanged
            return _Outcome(page.url, page.sha256, True, None, None, _REUSED, cached_key,
                            cached_row, cached_stamp)
    keyed = page_key(page.url, page.body)
    if keyed is not None and _cache is not None:
        row = reused_row(_cache, keyed)
        if row is not None:  # the records stay in the cache: only their row crosses the pipe
            return _Outcome(page.url, page.sha256, page.not_modified, None, None, _REUSED,
                            keyed.key, row, keyed.stamp.isoformat())
    try:
        division, fell_back = parse_division_page(page.body, page.url, page.encoding)
    except PageParseError as exc:
        return _Outcome(page.url, page.sha256, page.not_modified, None,
                        FetchFailure(exc.url, str(exc), 200))
    return _Outcome(page.url, page.sha256, page.not_modified, page_record(division), None,
                    _FALLBACK if fell_back else _FAST,
                    keyed.key if keyed is not None and cacheable(keyed, division) else None)


def _visit_batch(paths: Sequence[str]) -> list[_Outcome]:
    """Fetch a batch of pages concurrently, then parse them one by one.

    Fetch first, parse after: a thread parsing while others wait on sockets would hold the
    GIL for milliseconds each time a response arrives, and the fetches would queue behind it.
    """
    # Pages fetched before: asked again all at once on one connection (`revalidate`); the
    # others, and any it did not settle, one request each.
    revalidate = getattr(_source, "revalidate", None)
    settled: list[FetchedPage | FetchFailure | None] = (
        list(revalidate(paths)) if revalidate is not None else [None] * len(paths))
    rest = [path for path, page in zip(paths, settled, strict=True) if page is None]
    if _fetchers is None or len(rest) <= 1:
        fetched = iter(_fetch_each(rest))
    else:
        # One hand-off to each thread, not one per page (each wakes a thread: ~15 µs a page
        # of a worker's CPU): thread i fetches pages i, i + n, … of the batch in turn.
        n = min(_threads, len(rest))
        shares = list(_fetchers.map(_fetch_each, [rest[i::n] for i in range(n)]))
        fetched = iter([shares[i % n][i // n] for i in range(len(rest))])
    return [_parse(page if page is not None else next(fetched)) for page in settled]


class _Pool(Protocol):
    """Where batches of pages go, and their outcomes come back from, in any order."""

    def submit(self, batch: int, paths: list[str]) -> None: ...

    def next_done(self, timeout: float) -> tuple[int, list[_Outcome]]:
        """A finished batch (its number and outcomes); `queue.Empty` after `timeout`."""

    def shutdown(self, wait: bool = True) -> None: ...


class _ThreadPool:
    """Batches visited by threads of this process (one crawl process)."""

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max(1, threads))
        self._done: queue.SimpleQueue[tuple[int, Future[list[_Outcome]]]] = queue.SimpleQueue()

    def submit(self, batch: int, paths: list[str]) -> None:
        future = self._executor.submit(_visit_batch, paths)
        future.add_done_callback(lambda done: self._done.put((batch, done)))

    def next_done(self, timeout: float) -> tuple[int, list[_Outcome]]:
        batch, future = self._done.get(timeout=timeout)
        return batch, future.result()

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


class CrawlWorkerDied(RuntimeError):
    """A crawl worker process ended in the middle of the crawl (killed, out of memory)."""


# Batches a worker process holds at once: the one it visits and the next, so it never
# waits for the coordinator between two.
_WORKER_DEPTH = 2


class _ForkedPool:
    """Batches visited by forked worker processes, each fed through a pipe of its own.

    Not `concurrent.futures.ProcessPoolExecutor`: its manager and queue-feeder threads,
    futures and wake-ups cost the coordinator ~0.4 ms a batch, most of its CPU when most
    pages are answered 304 (a 100,000-precinct portal is ~12,700 batches). Here the
    coordinator's one thread writes a batch to a worker's pipe and waits on all the pipes
    at once; a worker that dies is an error (`CrawlWorkerDied`), never a hang.
    """

    def __init__(self, spec: SourceSpec, processes: int, threads: int) -> None:
        context = multiprocessing.get_context("fork")
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._load: list[int] = []
        self._waiting: collections.deque[bytes] = collections.deque()
        self._dead: set[int] = set()
        coordinator = os.getpid()
        for _ in range(processes):
            here, there = context.Pipe(duplex=True)
            # The child closes its copies of the coordinator's ends (its own and the
            # earlier workers'): a worker sees the end of its pipe only once every copy of
            # the other end is closed.
            process = context.Process(
                target=_worker_main, name="crawl-worker", daemon=True,
                args=(there, [*self._pipes, here], spec, threads, coordinator))
            process.start()
            there.close()
            self._pipes.append(here)
            self._processes.append(process)
            self._load.append(0)

    def submit(self, batch: int, paths: list[str]) -> None:
        self._waiting.append(pickle.dumps((batch, paths), pickle.HIGHEST_PROTOCOL))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting:
            live = [worker for worker in range(len(self._load)) if worker not in self._dead]
            worker = min(live, key=self._load.__getitem__, default=None)
            if worker is None or self._load[worker] >= _WORKER_DEPTH:
                return
            self._send(worker, self._waiting.popleft())

    def _send(self, worker: int, message: bytes) -> None:
        try:
            self._pipes[worker].send_bytes(message)
        except OSError:
            raise self._died(worker) from None
        self._load[worker] += 1

    def next_done(self, timeout: float) -> tuple[int, list[_Outcome]]:
        busy = [pipe for worker, (pipe, load) in enumerate(zip(self._pipes, self._load, strict=True))
                if load and worker not in self._dead]
        ready = multiprocessing.connection.wait(busy, timeout)
        if not ready:
            raise queue.Empty
        worker = self._pipes.index(ready[0])  # type: ignore[arg-type]
        try:
            batch, outcomes, error = pickle.loads(self._pipes[worker].recv_bytes())
        except (EOFError, OSError):
            raise self._died(worker) from None
        self._load[worker] -= 1
        if error is not None:
            raise error
        self._dispatch()
        return batch, outcomes

    def _died(self, worker: int) -> CrawlWorkerDied:
        self._dead.add(worker)  # its batches are lost: the crawl cannot be complete
        process = self._processes[worker]
        process.join(timeout=1.0)
        return CrawlWorkerDied(f"crawl worker {process.pid} ended in the middle of the crawl "
                               f"(exit code {process.exitcode})")

    def shutdown(self, wait: bool = True) -> None:
        # A worker reads the end of its pipe once its batches are done, and exits; one
        # stuck in a fetch after a deadline is not waited for (it dies with this process).
        for pipe in self._pipes:
            pipe.close()
        if wait:
            for process in self._processes:
                process.join()


def _worker_main(pipe: multiprocessing.connection.Connection,
                 inherited: list[multiprocessing.connection.Connection], spec: SourceSpec,
                 threads: int, coordinator: int) -> None:
    """A crawl worker: visit each batch the pipe brings, send back its outcomes."""
    for other_end in inherited:
        other_end.close()
    # A worker whose crawl was killed would wait for batches forever, an orphan holding
    # the run's files: it dies with it.
    die_with_parent(coordinator)
    _open_source(spec, threads)
    try:
        while True:
            try:
                batch, paths = pickle.loads(pipe.recv_bytes())
            except EOFError:
                return
            answer: tuple[int, list[_Outcome] | None, Exception | None]
            try:
                answer = (batch, _visit_batch(paths), None)
            except Exception as exc:  # the coordinator raises it, as a future's result would
                answer = (batch, None, _picklable(exc))
            try:
                pipe.send_bytes(pickle.dumps(answer, pickle.HIGHEST_PROTOCOL))
            except OSError:
                return  # the coordinator is gone or gave up (a deadline, a failure)
    finally:
        _close_source()


def _picklable(exc: Exception) -> Exception:
    """`exc`, or what it says, if it would not come back whole from the pipe."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _worker_pool(spec: SourceSpec, processes: int, concurrency: int) -> _Pool:
    """Where batches go: `processes` forked workers fetching with a share of `concurrency`
    threads each, or (one process) threads of this one."""
    if processes <= 1:
        _open_source(spec)
        return _ThreadPool(max(1, concurrency))
    # Fork, before this process starts any thread: workers start fast and clean, with the
    # raw archive open (they inherit it instead of each reading its checkpoint again).
    shared_archive(spec.archive_root)
    return _ForkedPool(spec, processes, max(1, concurrency // processes))


def crawl_contests(
    spec: SourceSpec,
    lang: str,
    election_id: str,
    contest_ids: Sequence[str],
    *,
    concurrency: int,
    processes: int,
    cache: PageCache | None = None,
    once_parsing: Callable[[], object] | None = None,
    deadline: float | None = None,
    max_pages: int | None = None,
    max_query_variants: int | None = None,
) -> CrawlTable:
    """Crawl contests from their root pages down every link; their pages in columns.

    About `concurrency` pages are fetched at a time, by `processes` worker processes (1 =
    threads of this process). A page that cannot be fetched or parsed is recorded as a
    failure and the crawl goes on; its body, if any, is already in the raw archive. A page
    whose body, apart from its `updated` stamp, is in `cache` is not parsed again.

    `once_parsing` is called once, from the crawl's loop, when the first parsed page comes
    back: it must be quick (`etl run` sets an event, on which its parent imports the quality
    gate; a crawl that parses nothing, every page reused or failed, need not, as a
    re-stamped portal's frames are those the gate validated last time).

    Limits: the crawl ends by `deadline` (epoch seconds; default `CEC_CRAWL_DEADLINE` from
    now), else `DeadlineExceeded`; at most `max_pages` pages are fetched (the rest are
    failures: coverage is lost), and at most `max_query_variants` query strings per path
    (the rest are refused: the path's page is already had).
    """
    global _cache  # noqa: PLW0603 - read by the workers, which fork after this line
    _cache = cache
    started = time.perf_counter()
    started_at = time.time()
    ends_at = time.time() + config.crawl_deadline()
    ends_at = ends_at if deadline is None else min(ends_at, deadline)
    page_cap = config.max_pages() if max_pages is None else max_pages
    variant_cap = config.max_query_variants() if max_query_variants is None else max_query_variants
    spec = replace(spec, deadline=ends_at)
    progress = {contest_id: _ContestProgress() for contest_id in contest_ids}
    seen: set[str] = set()
    variants: dict[str, int] = {}
    capped: set[str] = set()
    # What exists now (the page cache, the open archive: ~100,000 entries each at issue
    # 9's scale) lives through the crawl: the cyclic collector leaves it alone, here and
    # in the workers, which fork with it (its pages are not copied for the collector).
    gc.freeze()
    pool = _worker_pool(spec, processes, concurrency)
    pending: dict[int, list[_Visit]] = {}
    batches = itertools.count()

    def admitted(visit: _Visit) -> bool:
        """Whether a new link is within the page cap and the query-variant cap."""
        contest = progress[visit.contest_id]
        bare = urlsplit(visit.path).path
        if variants.get(bare, 0) >= variant_cap:  # another spelling of a path already had
            contest.refused.append(FetchFailure(
                _url(spec.base_url, visit.path),
                f"{REFUSED}query-string variant of {bare} beyond CEC_MAX_QUERY_VARIANTS="
                f"{variant_cap}"))
            return False
        if bare in capped:
            return False  # another spelling of a page already listed as not fetched
        if len(seen) >= page_cap:
            capped.add(bare)
            contest.failures.append(FetchFailure(
                _url(spec.base_url, visit.path),
                f"{REFUSED}not fetched: the crawl reached CEC_MAX_PAGES={page_cap} pages"))
            return False
        variants[bare] = variants.get(bare, 0) + 1
        seen.add(visit.path)
        return True

    def submit(visits: list[_Visit]) -> None:
        fresh = [v for v in visits if v.path not in seen and admitted(v)]
        for start in range(0, len(fresh), BATCH_SIZE):
            batch = fresh[start:start + BATCH_SIZE]
            number = next(batches)
            pending[number] = batch
            pool.submit(number, [v.path for v in batch])

    finished = False
    try:
        for contest_id in contest_ids:
            submit([_Visit(contest_id, contest_path(lang, election_id, contest_id), None, None)])
        # The workers have forked, so a thread is safe now: it pays, while they fetch, the
        # imports pyarrow makes on the first table built from Python values, which the end
        # of the crawl would wait for.
        threading.Thread(target=_warm_columns, name="warm-columns", daemon=True).start()
        while pending:
            try:
                # Fetches end by the deadline on their own; the grace covers a worker
                # stuck past it (one read timeout), so this wait is never unbounded.
                number, outcomes = pool.next_done(
                    timeout=max(0.1, ends_at + DEADLINE_GRACE_S - time.time()))
            except queue.Empty:
                raise _deadline_error(election_id, progress, len(seen), ends_at - started_at,
                                      pending_pages=sum(len(v) for v in pending.values())
                                      ) from None
            if once_parsing is not None and any(o.read_as in (_FAST, _FALLBACK)
                                                for o in outcomes):
                once_parsing()
                once_parsing = None
            for visit, outcome in zip(pending.pop(number), outcomes, strict=True):
                contest = progress[visit.contest_id]
                if outcome.failure is not None:
                    contest.failures.append(outcome.failure)
                    continue
                division_id, children = _record(contest, visit, outcome, cache)
                submit([_Visit(visit.contest_id, href, segment, division_id,
                               (*visit.order, position))
                        for position, (segment, _, href) in enumerate(children)])
        finished = True
    finally:
        # After a deadline, do not wait for a stuck worker: its fetch ends on its own, and
        # it dies with this process.
        pool.shutdown(wait=finished or time.time() < ends_at + DEADLINE_GRACE_S)
        gc.unfreeze()
        _cache = None
        if processes <= 1:
            _close_source()
    if time.time() > ends_at:
        raise _deadline_error(election_id, progress, len(seen), ends_at - started_at)
    crawls, tables = [], []
    for contest_id, contest in progress.items():
        log.info("crawled %s/%s: %d divisions, %d fetched, %d not modified, %d failed; "
                 "read %s", election_id, contest_id, contest.divisions(), contest.fetched,
                 contest.not_modified, len(contest.failures), contest.read_as)
        table, keys = contest.pages(cache)
        tables.append(table)
        crawls.append(ContestCrawl(
            election_id, contest_id, tuple(contest.failures),
            contest.fetched, contest.not_modified,
            pages_parsed_fast=contest.read_as[_FAST],
            pages_parsed_fallback=contest.read_as[_FALLBACK],
            pages_reused=contest.read_as[_REUSED], page_keys=tuple(keys),
            refused=tuple(contest.refused)))
    crawled = CrawlTable(pa.concat_tables(tables or [crawl_table((), ()).pages]), tuple(crawls))
    log.info("crawled %d contests of %s in %.2fs", len(crawls), election_id,
             time.perf_counter() - started)
    return crawled


def _warm_columns() -> None:
    """Build an empty crawl table: pyarrow imports pandas and pyarrow.compute on the first
    array it builds from Python values (~0.4 s of one idle core; more while workers run)."""
    crawl_table((), ())


# Seconds past the crawl deadline the coordinator waits for in-flight fetches to give up.
DEADLINE_GRACE_S = 15.0


def _url(base_url: str, path: str) -> str:
    try:
        return absolute_url(base_url, path)
    except FetchError as exc:
        return exc.url


def _deadline_error(
    election_id: str, progress: dict[str, _ContestProgress], admitted: int, budget: float,
    pending_pages: int = 0,
) -> DeadlineExceeded:
    parsed = sum(c.divisions() for c in progress.values())
    failed = sum(len(c.failures) for c in progress.values())
    return DeadlineExceeded(
        f"crawl of {election_id} hit its deadline of {budget:.0f}s "
        f"(CEC_CRAWL_DEADLINE / CEC_CYCLE_DEADLINE): coverage incomplete, {parsed} of "
        f"{admitted} pages parsed, {failed} failed, {pending_pages} still in flight; "
        f"nothing was published from this crawl"
    )


def _record(contest: _ContestProgress, visit: _Visit, outcome: _Outcome,
            cache: PageCache | None) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    """Add a parsed or reused page to its contest; the division's id and its child links."""
    assert outcome.sha256 is not None
    if outcome.not_modified:
        contest.not_modified += 1
    else:
        contest.fetched += 1
    if outcome.read_as is not None:
        contest.read_as[outcome.read_as] += 1
    # A contest's root declares its own id; every other division is its URL segment.
    row = outcome.reused_row
    if row is not None and cache is not None:
        division_id = visit.division_id or cache.declared_ids[row] or visit.contest_id
        contest.add_reused(visit.order, (visit.contest_id, division_id, visit.parent_id,
                                         outcome.url, outcome.sha256, outcome.stamp), row)
        return division_id, cache.children.get(row, ())
    record = outcome.record
    assert record is not None, "an outcome without records, failure or cached row"
    division_id = visit.division_id or record.declared_id or visit.contest_id
    contest.add(visit.order, CrawledDivision(visit.contest_id, division_id, visit.parent_id,
                                             outcome.url, outcome.sha256, record),
                outcome.page_key)
    return division_id, record.children
