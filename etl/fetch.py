"""HTTP client for the portal: pooled session, deadlines, retries, conditional requests.

`PortalClient.fetch(path)` returns the page's bytes, archived before anyone parses them.
Retries are here, not in the transport, so that each one is logged with its reason and a
`Retry-After` from the portal is honoured. The connections are `etl.transport`'s (the
standard library's `http.client`), not `requests` or urllib3: a whole-portal crawl is
~5,000 requests, and their per-request layers cost as much CPU as the rest of fetching
and archiving a page.

Safety (issue 10): every fetch has a total deadline (a body trickling in byte by byte
ends at the deadline, not never), a body larger than `CEC_MAX_PAGE_BYTES` is cut off
and refused, redirects are followed only on the portal's own host and a page is
archived under the URL that answered, and absolute URLs to another host are refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

from etl import config
from etl.archive import RawArchive
from etl.parse import page_encoding
from etl.transport import ConnectionPool, Response, TransportError, TransportTimeout

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_BACKOFF_S = 30.0
MAX_REDIRECTS = 5
READ_CHUNK = 65_536
# Reasons of pages refused by policy (not broken) start with this, so the cycle summary
# can tell them from failures.
REFUSED = "refused: "


class FetchError(Exception):
    """A page that could not be fetched after all retries."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


class DeadlineExceeded(Exception):
    """A crawl or a cycle ran out of its time budget (`CEC_CRAWL_DEADLINE`, `CEC_CYCLE_DEADLINE`)."""


@dataclass(frozen=True)
class FetchedPage:
    """A page's body and where it came from (a fresh 200 or the archive after a 304).

    `url` is the URL that answered (after same-host redirects); `encoding` is how its text
    is read (`etl.parse.page_encoding`). A 304's body is read from `archive` when `body`
    is first asked for: a crawl that reuses the page's records by its URL and digest never
    reads it.
    """

    url: str
    status: int
    fetched_body: bytes | None  # None: the archived body with this sha256
    sha256: str
    not_modified: bool
    encoding: str | None = None
    archive: RawArchive | None = field(default=None, repr=False, compare=False)

    @property
    def body(self) -> bytes:
        """The page's bytes (read from the archive the first time, after a 304)."""
        if self.fetched_body is not None:
            return self.fetched_body
        # Kept in the instance's dict (it is frozen); not functools.cached_property, whose
        # one lock on Python 3.11 would serialise every page's read across threads.
        body: bytes | None = self.__dict__.get("_archived_body")
        if body is None:
            assert self.archive is not None, "a page with neither a body nor an archive"
            body = self.__dict__["_archived_body"] = self.archive.read(self.sha256)
        return body


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (our `fetched_at`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def same_host(base_url: str, url: str) -> bool:
    """Whether `url` is on the portal's scheme, host and port."""
    base, other = urlsplit(base_url), urlsplit(url)
    return (base.scheme, base.netloc.lower()) == (other.scheme, other.netloc.lower())


def absolute_url(base_url: str, path: str) -> str:
    """Absolute URL of a portal path (hrefs on the pages are site-absolute).

    An absolute URL is accepted only on the portal's own host: anything else is refused
    with a `FetchError`, so a page can never send the crawler elsewhere.
    """
    if path.startswith(("http://", "https://", "//")):
        url = urljoin(base_url, path)
        if not same_host(base_url, url):
            raise FetchError(url, f"{REFUSED}a link to another host than the portal's "
                                  f"({urlsplit(base_url).netloc})")
        return url
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


class _BodyTooLarge(Exception):
    pass


class _DeadlineHit(Exception):
    pass


class _RequestFailed(Exception):
    """One attempt failed in transport (connection, timeout, a truncated body); retryable."""


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class PortalClient:
    """One pool of keep-alive connections to the portal; share a client between threads."""

    def __init__(
        self,
        base_url: str,
        archive: RawArchive,
        *,
        pool_size: int = 16,
        timeout: float | None = None,
        retries: int | None = None,
        backoff_s: float = 0.5,
        conditional: bool = True,
        deadline: float | None = None,
        request_deadline: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.archive = archive
        self.timeout = config.request_timeout() if timeout is None else timeout
        self.retries = config.max_retries() if retries is None else retries
        # Seconds one fetch may take in total, retries included; `deadline` (epoch seconds,
        # comparable across processes) is the crawl's or the cycle's end, if any.
        self.request_deadline = (config.request_deadline() if request_deadline is None
                                 else request_deadline)
        self.deadline = deadline
        self.max_bytes = config.max_page_bytes() if max_bytes is None else max_bytes
        self.backoff_s = backoff_s
        self.conditional = conditional
        self.headers = {"User-Agent": config.USER_AGENT, "Accept-Encoding": "gzip, deflate",
                        "Accept": "*/*"}
        # Proxy settings are read from the environment once (http_proxy, no_proxy, …).
        self.pool = ConnectionPool(self.base_url, pool_size)
        self._pipelining = True  # until a pipeline's wait times out (see `revalidate`)

    def close(self) -> None:
        """Close pooled connections and the archive's pack."""
        self.pool.clear()
        self.archive.close()

    def fetch(self, path: str) -> FetchedPage:
        """Fetch a page, retrying 429/5xx/timeouts with backoff; archive every response.

        Raises `FetchError` when the page cannot be had within its deadline, when it is
        larger than the size cap, or when it redirects to another host.
        """
        url = absolute_url(self.base_url, path)
        ends_at = time.time() + self.request_deadline
        if self.deadline is not None:
            ends_at = min(ends_at, self.deadline)
        last_reason = "not attempted"
        last_status: int | None = None
        retry_after: str | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
                asked = retry_after_seconds(retry_after)
                wait = min(MAX_BACKOFF_S, delay if asked is None else asked)
                if time.time() + wait >= ends_at:
                    last_reason += "; no time left for a retry before the deadline"
                    break
                log.warning("retry %d/%d for %s in %.2fs: %s", attempt, self.retries, url, wait,
                            last_reason)
                time.sleep(wait)
            if time.time() >= ends_at:
                last_reason = "deadline reached before the request" if not attempts else last_reason
                break
            attempts += 1
            retry_after = None
            try:
                answered, response, body = self._get(url, ends_at)
            except _DeadlineHit as exc:
                last_reason, last_status = f"deadline: {exc}", None
                continue
            except _BodyTooLarge as exc:
                raise FetchError(url, f"{REFUSED}{exc}") from None
            except _RequestFailed as exc:
                last_reason, last_status = str(exc), None
                continue
            status = response.status
            if status == 304:
                unchanged = self._from_archive(answered)
                if unchanged is not None:
                    return unchanged
                last_reason, last_status = "304 without an archived body", 304
                continue
            sha256, encoding = self._archived(answered, response, body)
            if status == 200:
                return FetchedPage(answered, 200, body, sha256, not_modified=False,
                                   encoding=encoding)
            last_status = status
            last_reason = f"HTTP {status}"
            if status in REDIRECT_STATUS:
                location = response.headers.get("Location", "")
                raise FetchError(url, f"{REFUSED}a redirect to another host "
                                      f"({urljoin(answered, location)}); only the portal's own "
                                      f"host ({urlsplit(self.base_url).netloc}) is followed",
                                 status)
            if status not in RETRYABLE_STATUS:
                break
            retry_after = response.headers.get("Retry-After")
            asked = retry_after_seconds(retry_after)
            if asked is not None and asked > MAX_BACKOFF_S:
                # Waiting longer would stall the whole cycle; the next scheduled run retries.
                last_reason += f", Retry-After {asked:.0f}s is longer than the {MAX_BACKOFF_S:.0f}s we wait"
                break
        if last_status is None or last_status in RETRYABLE_STATUS:
            last_reason = f"{last_reason} after {attempts} attempt{'s' * (attempts != 1)}"
        raise FetchError(url, last_reason, last_status)

    def revalidate(self, paths: Sequence[str]) -> list[FetchedPage | None]:
        """Conditional GETs for the pages among `paths` already archived, pipelined on one
        connection (HTTP/1.1): a page fetched again costs the client and the portal a
        fraction of a request's round trip on its own (issue 9: ~95% of a 100,000-precinct
        portal answers 304 in an incremental cycle).

        Only what is settled in one go is returned: a 304 (the archived body, as `fetch`
        gives it) or a 200 read whole within the size cap and the deadline (archived, as
        `fetch` does). None for every other page: not archived, any other answer (a
        redirect, an error, a 5xx), a transport failure, and every page after those on the
        connection; `fetch` then asks for it again with its retries, redirects and reasons.
        When a response after the first did not come within the read timeout (not the
        deadline), this client pipelines no more: a server may leave pipelined requests
        unanswered.
        """
        results: list[FetchedPage | None] = [None] * len(paths)
        if not (self.conditional and self._pipelining and self.pool.can_pipeline):
            return results
        wanted: list[tuple[int, str, bytes]] = []  # index, URL, request head
        for index, path in enumerate(paths):
            try:
                url = absolute_url(self.base_url, path)
            except FetchError:
                continue
            conditional = self._conditional_headers(url)
            head = (self.pool.request_head(_target(url), self.headers | conditional)
                    if conditional else None)
            if head is not None:
                wanted.append((index, url, head))
        ends_at = time.time() + self.request_deadline
        if self.deadline is not None:
            ends_at = min(ends_at, self.deadline)
        if len(wanted) < 2 or ends_at <= time.time():
            return results  # nothing to gain over `fetch`, or no time to ask (`fetch` says so)
        timeout = min(self.timeout, ends_at - time.time())
        answered = 0
        try:
            # Closed when left early: the connection, with answers still unread, is dropped.
            # The pages' index lines are appended in one go (parsed only once returned).
            with self.archive.index_lines_batched(), contextlib.closing(self.pool.pipeline(
                    [head for _, _, head in wanted], timeout, ends_at)) as responses:
                # Not zip(): the pipeline's generator must run past its last answer, where
                # it puts the connection back into the pool.
                for response in responses:
                    index, url, _ = wanted[answered]
                    page = self._settled(url, response, ends_at)
                    if page is None:
                        break
                    results[index] = page
                    answered += 1
        except TransportTimeout as exc:
            if answered and not exc.deadline:
                self._pipelining = False
                log.info("pipelined requests went unanswered on %s: fetching one by one "
                         "from now on", self.base_url)
        except (TransportError, _BodyTooLarge, _DeadlineHit, _RequestFailed):
            pass  # the pages not settled are fetched one by one
        return results

    def _settled(self, url: str, response: Response, ends_at: float) -> FetchedPage | None:
        """A pipelined response as `fetch` would give it (304 or 200), or None."""
        if response.status == 304:
            response.release()
            return self._from_archive(url)
        if response.status != 200:
            return None  # not read: the pipeline ends, `fetch` asks again
        body = self._read_body(response, ends_at)
        response.release()
        sha256, encoding = self._archived(url, response, body)
        return FetchedPage(url, 200, body, sha256, not_modified=False, encoding=encoding)

    def _from_archive(self, url: str) -> FetchedPage | None:
        """A 304's page: the body the archive last stored for `url` (read when asked), or
        None if it has none."""
        cached = self.archive.latest(url)
        if cached is None:
            return None
        return FetchedPage(url, 200, None, cached.sha256, not_modified=True,
                           encoding=cached.encoding, archive=self.archive)

    def _archived(self, url: str, response: Response, body: bytes) -> tuple[str, str | None]:
        """Store a response whose body was read: its sha256 and the text encoding chosen."""
        encoding, source = page_encoding(response.headers.get("Content-Type"), body)
        sha256 = self.archive.store(url, response.status, dict(response.headers), body,
                                    utc_now(), encoding=encoding, encoding_source=source)
        return sha256, encoding

    def _get(self, url: str, ends_at: float) -> tuple[str, Response, bytes]:
        """One GET, following redirects on the portal's host only; (URL that answered, response, body).

        A redirect to another host is returned as is (the caller refuses it). The body is
        read in chunks as they arrive, so the deadline and the size cap are checked while
        it trickles in. A transport failure is a `_RequestFailed` saying what happened.
        """
        for _ in range(MAX_REDIRECTS + 1):
            remaining = ends_at - time.time()
            if remaining <= 0:
                raise _DeadlineHit("no time left")
            target = _target(url)
            try:
                response = self.pool.get(target, self._request_headers(url),
                                         min(self.timeout, remaining), deadline=ends_at)
            except TransportTimeout as exc:
                if exc.deadline:
                    raise _DeadlineHit("the response's status line and headers had not all "
                                       "arrived when it passed") from None
                raise _transport_failure(exc, self.timeout) from None
            except TransportError as exc:
                raise _transport_failure(exc, self.timeout) from None
            try:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUS and location:
                    target_url = urljoin(url, location)
                    if same_host(self.base_url, target_url):
                        log.info("redirect %d %s -> %s", response.status, url, target_url)
                        response.discard()
                        url = target_url
                        continue
                body = self._read_body(response, ends_at)
            except BaseException:
                response.discard()  # a body not read to its end: drop the connection
                raise
            # The whole body was read: the connection goes back to the pool (keep-alive).
            response.release()
            return url, response, body
        raise _RequestFailed(f"TooManyRedirects: more than {MAX_REDIRECTS} redirects from {url}")

    def _read_body(self, response: Response, ends_at: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise _BodyTooLarge(f"a body of {int(declared)} bytes (Content-Length) is larger "
                                f"than the {self.max_bytes}-byte cap")
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                # What has arrived (up to a chunk), so a trickling body is checked against
                # the deadline after every few bytes, not after 64 KB.
                chunk = response.read_some(READ_CHUNK, self.max_bytes - size + 1)
                if chunk is None:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise _BodyTooLarge(f"the body grew past the {self.max_bytes}-byte cap")
                chunks.append(chunk)
                if time.time() > ends_at:
                    raise _DeadlineHit(f"{size} bytes of the body had arrived when the "
                                       f"{self.request_deadline:g}s deadline passed")
        except TransportTimeout as exc:
            if exc.deadline:
                raise _DeadlineHit(f"{size} bytes of the body had arrived when the "
                                   f"{self.request_deadline:g}s deadline passed") from None
            raise _transport_failure(exc, self.timeout) from None
        except TransportError as exc:  # a truncated, reset or undecodable body
            raise _transport_failure(exc, self.timeout) from None
        return b"".join(chunks)

    def _request_headers(self, url: str) -> dict[str, str]:
        return self.headers | self._conditional_headers(url)

    def _conditional_headers(self, url: str) -> dict[str, str]:
        if not self.conditional:
            return {}
        cached = self.archive.latest(url)
        if cached is None:
            return {}
        headers = {}
        if cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        return headers


def _target(url: str) -> str:
    """What a request line asks for: the URL's path and query."""
    parts = urlsplit(url)
    return f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"


def _transport_failure(exc: TransportError, timeout: float) -> _RequestFailed:
    """The reason a person reads for a failed attempt (as `requests` named them before)."""
    if isinstance(exc, TransportTimeout):
        return _RequestFailed(f"timeout after {timeout}s ({exc})")
    return _RequestFailed(f"ConnectionError: {exc}")
