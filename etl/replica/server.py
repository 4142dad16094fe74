"""The replica's HTTP/1.1 server: asyncio (uvloop when importable), keep-alive, TCP_NODELAY.

Serving a cached page is a dict lookup plus a few bytes of headers. Control endpoints
under `/_replica/` move through the timeline and switch faults; they are never faulted.
`ReplicaServer` runs the server in a background thread for tests and the Airflow replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta
from email.utils import formatdate, parsedate_to_datetime
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs

from etl.replica.render import HTML, JSON, Page, PortalRenderer, http_date
from etl.replica.scenario import Scenario, load_scenario

logger = logging.getLogger(__name__)

REASONS = {
    200: "OK",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
MAX_HEAD_BYTES = 65_536
CACHED_SNAPSHOTS = 4  # pages of a snapshot are ~33 MB (ru + kg); keep a few
# ... but no more than this many bytes of pages in all: a 100,000-precinct snapshot is
# ~330 MB per language. Past it, pages of the current snapshot are rendered per request.
CACHED_BYTES = 192 * 2**20


@dataclass(frozen=True)
class Faults:
    """Deterministic fault switches; each `*_count` is per path, None meaning every request.

    For the n-th request of a path (counted from the last time faults were set) that
    matches `path_regex`: `latency` seconds are added; if `hang` > 0 and n <= hang_count
    the answer is held `hang` more seconds; if `status` is set and n <= status_count the
    answer is that status (with `Retry-After: retry_after` when given); otherwise if
    `truncate` and n <= truncate_count the full Content-Length is announced, half the
    body sent and the connection closed; otherwise if `trickle` > 0 and n <= trickle_count
    the head is sent at once and the body one byte every `trickle` seconds (a slow-body
    server: every read returns within a read timeout, so only a total deadline ends it).
    """

    latency: float = 0.0
    status: int | None = None
    status_count: int | None = None
    retry_after: int | None = None
    hang: float = 0.0
    hang_count: int | None = None
    truncate: bool = False
    truncate_count: int | None = None
    trickle: float = 0.0
    trickle_count: int | None = None
    path_regex: str | None = None

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Faults:
        """Faults from a JSON object; unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = set(document) - known
        if unknown:
            raise ValueError(f"unknown fault switches {sorted(unknown)}; known: {sorted(known)}")
        faults = cls(**document)
        if faults.status is not None and faults.status not in REASONS:
            raise ValueError(f"unsupported fault status {faults.status}")
        if faults.path_regex is not None:
            re.compile(faults.path_regex)
        return faults

    def to_json(self) -> dict[str, Any]:
        """The switches as a JSON-ready dict."""
        return asdict(self)

    @property
    def active(self) -> bool:
        """Whether any switch is on."""
        return bool(self.latency or self.status or self.hang or self.truncate or self.trickle)


@dataclass(frozen=True)
class _Cached:
    """A rendered page with its response head prepared (everything but Date/Connection)."""

    page: Page
    head: bytes
    modified: float  # POSIX seconds of Last-Modified
    last_modified_line: bytes


@dataclass(frozen=True)
class _Reply:
    """What to send for one request, after how long, and whether to close after it."""

    data: bytes
    delay: float = 0.0
    close: bool = False
    trickle: float = 0.0  # seconds between body bytes (0: send at once)


class Replica:
    """The server's state and request handling, independent of the transport."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        at: int | str = -1,
        live: bool = False,
        speed: float = 1.0,
        faults: Faults | None = None,
    ) -> None:
        self.scenario = scenario
        self.renderer = PortalRenderer(scenario)
        self.live = live
        self.speed = speed
        self._lock = threading.Lock()
        self._anchor_index = scenario.resolve(at)
        self._anchor_clock = time.monotonic()
        # seconds after the anchor at which each later snapshot takes over (live mode)
        self._offsets: list[float] = []
        self._rebuild_schedule()
        self.faults = faults or Faults()
        self._fault_regex = re.compile(self.faults.path_regex) if self.faults.path_regex else None
        self._hits: dict[str, int] = {}
        self._cache: OrderedDict[tuple[int, float], dict[str, _Cached]] = OrderedDict()
        self._cached_bytes: dict[tuple[int, float], int] = {}
        self._restamp = 0.0  # seconds added to every page's updated time (see `restamp`)
        self._date = b""
        self._date_second = -1
        self._last_modified: dict[tuple[int, float], bytes] = {}
        self.connections: set[_HttpProtocol] = set()

    # -- timeline -------------------------------------------------------------------

    def _rebuild_schedule(self) -> None:
        times = [s.portal_time for s in self.scenario.snapshots[self._anchor_index :]]
        self._offsets = [(t - times[0]).total_seconds() / self.speed for t in times[1:]]

    @property
    def index(self) -> int:
        """The snapshot served now (in live mode: from the clock)."""
        if not self.live:
            return self._anchor_index
        elapsed = time.monotonic() - self._anchor_clock
        return self._anchor_index + bisect_right(self._offsets, elapsed)

    def goto(self, at: int | str) -> int:
        """Serve snapshot `at` (index or label) from now on; in live mode, advance from it."""
        index = self.scenario.resolve(at)
        with self._lock:
            self._anchor_index = index
            self._anchor_clock = time.monotonic()
            self._restamp = 0.0
            self._rebuild_schedule()
        logger.info("replica now at snapshot %d (%s)", index, self.scenario.snapshots[index].label)
        return index

    def restamp(self, seconds: float, prerender_lang: str | None = None) -> int:
        """Show every page with its `updated` time `seconds` after the snapshot's, content
        otherwise unchanged (the portal re-publishing unchanged pages); `goto` resets it.

        With `prerender_lang`, the snapshot's pages in that language are rendered at the
        new time into the page cache at once (for benchmarks, as `prerender`); how many.
        """
        with self._lock:
            self._restamp = float(seconds)
        logger.info("replica pages re-stamped %+.0fs", seconds)
        if prerender_lang is None:
            return 0
        index = self.index
        return sum(self._page(index, target, restamp=float(seconds)) is not None
                   for target in self._page_targets(prerender_lang))

    def _page_targets(self, lang: str) -> list[str]:
        """The election's pages and every division page of the scenario, in `lang`."""
        election = self.scenario.election_id
        targets = [f"/{lang}/results/", f"/{lang}/results/{election}/"]
        for contest in self.scenario.contests.values():
            targets += [self.renderer.division_page_path(lang, contest, division_id)
                        for division_id in contest.divisions]
        return targets

    def prerender(self, at: int | str, lang: str = "ru") -> int:
        """Render into the page cache the division pages (and election pages) of snapshot
        `at` in `lang` that differ from the snapshot served now, without moving the
        timeline; how many it rendered or found rendered.

        For benchmarks: a real portal renders its pages on its own machines, the replica on
        the cores of the pipeline it serves. After `goto(at)`, a timed cycle finds them
        rendered (as far as they fit in CACHED_BYTES). In a scenario whose pages do not show
        their own last change (validators unknown), every page is rendered.
        """
        index, current = self.scenario.resolve(at), self.index
        rendered = 0
        for target in self._page_targets(lang):
            tag = self.renderer.validator(index, target)
            if tag is not None and tag == self.renderer.validator(current, target):
                continue
            rendered += self._page(index, target, restamp=0.0) is not None
        logger.info("replica rendered %d pages of snapshot %d ahead", rendered, index)
        return rendered

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault switches and restart the per-path request counters."""
        regex = re.compile(faults.path_regex) if faults.path_regex else None
        with self._lock:
            self.faults, self._fault_regex, self._hits = faults, regex, {}
        logger.info("replica faults set: %s", faults.to_json() if faults.active else "none")

    def state(self) -> dict[str, Any]:
        """The control endpoint's view of the replica."""
        index = self.index
        snapshot = self.scenario.snapshots[index]
        return {
            "scenario": self.scenario.scenario_id,
            "seed": self.scenario.seed,
            "index": index,
            "label": snapshot.label,
            "portal_time": (snapshot.portal_time + timedelta(seconds=self._restamp)).isoformat(),
            "restamp_seconds": self._restamp,
            "mode": snapshot.mode,
            "snapshots": len(self.scenario.snapshots),
            "live": self.live,
            "speed": self.speed,
            "faults": self.faults.to_json(),
        }

    # -- requests -------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Answer one request (the connection decides keep-alive; see `_HttpProtocol`)."""
        logger.debug("%s %s", method, target)
        if target.startswith("/_replica/"):
            return self._control(method, target, body)
        if method not in ("GET", "HEAD"):
            return _Reply(_simple(405, b"method not allowed\n", "text/plain; charset=utf-8"))
        faults = self.faults
        if faults.active and (self._fault_regex is None or self._fault_regex.search(target)):
            return self._faulted(method, target, headers, faults)
        return _Reply(self._respond(method, target, headers))

    def _faulted(
        self, method: str, target: str, headers: dict[str, str], faults: Faults
    ) -> _Reply:
        hits = self._hits
        n = hits[target] = hits.get(target, 0) + 1
        delay = faults.latency
        if faults.hang and (faults.hang_count is None or n <= faults.hang_count):
            logger.info("fault: hang %.1fs on %s (request %d)", faults.hang, target, n)
            delay += faults.hang
        if faults.status and (faults.status_count is None or n <= faults.status_count):
            logger.info("fault: status %d on %s (request %d)", faults.status, target, n)
            extra = f"Retry-After: {faults.retry_after}\r\n" if faults.retry_after is not None else ""
            body = f"{faults.status} {REASONS[faults.status]} (replica fault)\n".encode()
            return _Reply(_simple(faults.status, body, "text/plain; charset=utf-8", extra), delay)
        data = self._respond(method, target, headers)
        if faults.truncate and (faults.truncate_count is None or n <= faults.truncate_count):
            head_end = data.index(b"\r\n\r\n") + 4
            cut = head_end + (len(data) - head_end) // 2
            logger.info("fault: truncated body on %s (request %d)", target, n)
            return _Reply(data[:cut], delay, close=True)
        if faults.trickle and (faults.trickle_count is None or n <= faults.trickle_count):
            logger.info("fault: trickle one byte per %.2fs on %s (request %d)", faults.trickle,
                        target, n)
            return _Reply(data, delay, trickle=faults.trickle)
        return _Reply(data, delay)

    def _respond(self, method: str, target: str, headers: dict[str, str]) -> bytes:
        index = self.index
        if_none_match = headers.get("if-none-match")
        if if_none_match is not None:
            # An unchanged page of a scenario whose pages keep their own time: known
            # unchanged from its validator, without rendering it (`PortalRenderer.validator`).
            restamp = self._restamp
            tag = self.renderer.validator(index, target, restamp=timedelta(seconds=restamp))
            if tag is not None and _tag_matches(if_none_match, tag):
                return b"".join((b"HTTP/1.1 304 Not Modified\r\nETag: ", tag.encode(),
                                 b"\r\n", self._last_modified_line(index, restamp),
                                 self._http_date(), b"\r\n"))
        cached = self._page(index, target)
        if cached is None:
            return _simple(404, b"not found\n", "text/plain; charset=utf-8")
        date = self._http_date()
        if cached.page.status == 200 and _not_modified(headers, cached):
            return b"".join(
                (
                    b"HTTP/1.1 304 Not Modified\r\nETag: ",
                    cached.page.etag.encode(),
                    b"\r\n",
                    cached.last_modified_line,
                    date,
                    b"\r\n",
                )
            )
        if method == "HEAD":
            return cached.head + date + b"\r\n"
        return b"".join((cached.head, date, b"\r\n", cached.page.body))

    def _page(self, index: int, target: str, restamp: float | None = None) -> _Cached | None:
        restamp = self._restamp if restamp is None else restamp
        if restamp and (index, 0.0) in self._cache:
            # What every re-stamped page of the snapshot is made from: recently used too,
            # or a night of re-stamps would evict it and render each page from scratch.
            self._cache.move_to_end((index, 0.0))
        pages = self._cache.get((index, restamp))
        if pages is None:
            pages = self._cache[(index, restamp)] = {}
            self._cached_bytes[(index, restamp)] = 0
            while len(self._cache) > CACHED_SNAPSHOTS:
                self._cached_bytes.pop(self._cache.popitem(last=False)[0], None)
        else:
            self._cache.move_to_end((index, restamp))
        cached = pages.get(target)
        if cached is not None:
            return cached
        path, _, query = target.partition("?")
        page = None
        unstamped = self._cache.get((index, 0.0), {}).get(target) if restamp else None
        if unstamped is not None:  # a re-stamp: the page read before, its time moved
            page = self.renderer.restamped(index, unstamped.page, timedelta(seconds=restamp),
                                           path)
        if page is None:
            page = self.renderer.render(index, path, query, restamp=timedelta(seconds=restamp))
        if page is None:
            return None
        cached = _prepare(page)
        size = len(cached.page.body) + len(cached.head)
        while sum(self._cached_bytes.values()) + size > CACHED_BYTES and len(self._cache) > 1:
            self._cached_bytes.pop(self._cache.popitem(last=False)[0], None)
        if sum(self._cached_bytes.values()) + size <= CACHED_BYTES:
            pages[target] = cached
            self._cached_bytes[(index, restamp)] += size
        return cached

    def _last_modified_line(self, index: int, restamp: float) -> bytes:
        """The Last-Modified header of snapshot `index`'s pages (as `Page.last_modified`)."""
        line = self._last_modified.get((index, restamp))
        if line is None:
            snapshot = self.scenario.snapshots[index]
            moved = replace(snapshot, portal_time=snapshot.portal_time + timedelta(seconds=restamp))
            line = f"Last-Modified: {http_date(moved)}\r\n".encode()
            self._last_modified[(index, restamp)] = line
        return line

    def _http_date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
            self._date_second = now
        return self._date

    def _control(self, method: str, target: str, body: bytes) -> _Reply:
        path, _, query = target.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            if path == "/_replica/state" and method == "GET":
                return _json_reply(200, self.state())
            if path == "/_replica/snapshots" and method == "GET":
                return _json_reply(200, [_snapshot_json(s) for s in self.scenario.snapshots])
            if path == "/_replica/goto" and method == "POST":
                at: int | str | None = params.get("label") or params.get("at")
                if "time" in params:
                    at = self.scenario.index_at(datetime.fromisoformat(params["time"]))
                if at is None:
                    return _json_reply(400, {"error": "give ?at=N, ?label=LABEL or ?time=ISO"})
                self.goto(at)
                return _json_reply(200, self.state())
            if path == "/_replica/prerender" and method == "POST":
                at = params.get("label") or params.get("at")
                if at is None:
                    return _json_reply(400, {"error": "give ?at=N or ?label=LABEL"})
                return _json_reply(200, {"rendered": self.prerender(at, params.get("lang", "ru"))})
            if path == "/_replica/restamp" and method == "POST":
                rendered = self.restamp(float(params.get("seconds", "0")),
                                        params.get("prerender"))
                return _json_reply(200, self.state() | {"rendered": rendered})
            if path == "/_replica/faults":
                if method == "GET":
                    return _json_reply(200, self.faults.to_json())
                if method == "DELETE":
                    self.set_faults(Faults())
                    return _json_reply(200, self.faults.to_json())
                if method == "POST":
                    document = json.loads(body or b"{}")
                    self.set_faults(Faults.from_json(document))
                    return _json_reply(200, self.faults.to_json())
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(404, {"error": f"no control endpoint {method} {path}"})


def _prepare(page: Page) -> _Cached:
    modified = parsedate_to_datetime(page.last_modified).timestamp()
    lines = [
        f"HTTP/1.1 {page.status} {REASONS[page.status]}",
        f"Content-Type: {page.content_type}",
        f"Content-Length: {len(page.body)}",
        f"ETag: {page.etag}",
        f"Last-Modified: {page.last_modified}",
        "Cache-Control: no-cache",
    ]
    if page.retry_after is not None:
        lines.append(f"Retry-After: {page.retry_after}")
    head = ("\r\n".join(lines) + "\r\n").encode()
    last_modified_line = f"Last-Modified: {page.last_modified}\r\n".encode()
    return _Cached(page, head, modified, last_modified_line)


def _tag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, or `*`)."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _not_modified(headers: dict[str, str], cached: _Cached) -> bool:
    """RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since when both are sent."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return _tag_matches(if_none_match, cached.page.etag)
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since is not None:
        try:
            since = parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError):
            return False
        return cached.modified <= since
    return False


def _simple(status: int, body: bytes, content_type: str, extra_headers: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


def _json_reply(status: int, document: object) -> _Reply:
    body = json.dumps(document, ensure_ascii=False).encode()
    return _Reply(_simple(status, body, JSON))


def _snapshot_json(snapshot: Any) -> dict[str, Any]:
    return {
        "index": snapshot.index,
        "label": snapshot.label,
        "portal_time": snapshot.portal_time.isoformat(),
        "mode": snapshot.mode,
        "description": snapshot.description,
    }


class _HttpProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1: pipelined requests answered in order, keep-alive by default."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiting = False  # a delayed reply is pending: later requests wait their turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.replica.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # not a TCP socket (e.g. a Unix socket in a test harness): nothing to set
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.replica.connections.discard(self)

    def close(self) -> None:
        """Close the connection (server shutdown)."""
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.waiting:
            self._process()

    def _process(self) -> None:
        while self.transport is not None and not self.waiting:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self._finish(_Reply(_simple(400, b"head too large\n", HTML), close=True))
                return
            try:
                method, target, version, headers = _parse_head(bytes(self.buffer[:end]))
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                self._finish(_Reply(_simple(400, b"bad request\n", HTML), close=True))
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            reply = self.replica.handle(method, target, headers, body)
            connection = headers.get("connection", "").lower()
            keep_alive = connection != "close" and (
                version == "HTTP/1.1" or connection == "keep-alive"
            )
            if not keep_alive:
                reply = replace(reply, close=True)
            if reply.delay > 0:
                self.waiting = True
                asyncio.get_running_loop().call_later(reply.delay, self._finish, reply)
                return
            self._finish(reply)

    def _finish(self, reply: _Reply) -> None:
        transport = self.transport
        if transport is None:
            return
        data = reply.data
        if reply.close:
            data = data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        if reply.trickle > 0:
            head_end = data.index(b"\r\n\r\n") + 4
            transport.write(data[:head_end])
            self.waiting = True
            self._trickle(replace(reply, data=data[head_end:]))
            return
        transport.write(data)
        if reply.close:
            transport.close()
            self.transport = None
            return
        if self.waiting:
            self.waiting = False
            self._process()


    def _trickle(self, reply: _Reply) -> None:
        """Send the rest of a trickled body one byte at a time, then go on as usual."""
        transport = self.transport
        if transport is None:
            return
        if reply.data:
            transport.write(reply.data[:1])
            asyncio.get_running_loop().call_later(
                reply.trickle, self._trickle, replace(reply, data=reply.data[1:]))
            return
        if reply.close:
            transport.close()
            self.transport = None
            return
        self.waiting = False
        self._process()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    text = head.decode("latin-1")
    request_line, *header_lines = text.split("\r\n")
    method, target, version = request_line.split(" ")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is importable, else the standard one."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def start_server(replica: Replica, host: str, port: int) -> asyncio.Server:
    """Listen on host:port (0 = an ephemeral port) and serve `replica`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _HttpProtocol(replica), host, port, backlog=2048, reuse_address=True
    )


class ReplicaServer:
    """The replica in a background thread: `with ReplicaServer(at="final") as srv: ...`."""

    def __init__(
        self,
        scenario: str | Scenario = "kg2021",
        *,
        at: int | str = -1,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        live: bool = False,
        speed: float = 1.0,
        faults: Faults | None = None,
    ) -> None:
        if isinstance(scenario, str):
            scenario = load_scenario(scenario, seed)
        self.replica = Replica(scenario, at=at, live=live, speed=speed, faults=faults)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def scenario(self) -> Scenario:
        """The scenario being served."""
        return self.replica.scenario

    @property
    def base_url(self) -> str:
        """E.g. `http://127.0.0.1:40123` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def index(self) -> int:
        """The snapshot served now."""
        return self.replica.index

    def goto(self, at: int | str) -> int:
        """Serve snapshot `at` (index or label); returns its index."""
        return self.replica.goto(at)

    def restamp(self, seconds: float, prerender_lang: str | None = None) -> int:
        """Re-stamp every page `seconds` after the snapshot's time, rendering them ahead in
        `prerender_lang` if given (see `Replica.restamp`)."""
        return self._on_server_thread(lambda: self.replica.restamp(seconds, prerender_lang))

    def prerender(self, at: int | str, lang: str = "ru") -> int:
        """Render ahead the pages of snapshot `at` that differ (see `Replica.prerender`)."""
        return self._on_server_thread(lambda: self.replica.prerender(at, lang))

    def _on_server_thread(self, call: Callable[[], int]) -> int:
        """`call()` on the server's thread (the page cache is that thread's); its result, or
        what it raised, in the calling thread."""
        if self._loop is None:
            return call()

        async def on_loop() -> int:
            return call()

        return asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result()

    def set_faults(self, faults: Faults | None = None, **switches: Any) -> Faults:
        """Set fault switches (a Faults or keyword switches); counters restart."""
        faults = faults or Faults.from_json(switches)
        self.replica.set_faults(faults)
        return faults

    def clear_faults(self) -> None:
        """Switch every fault off."""
        self.replica.set_faults(Faults())

    def start(self) -> ReplicaServer:
        """Start serving in a daemon thread; returns once the socket listens."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = self._loop = new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    start_server(self.replica, self.host, self.port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            self._server.close()
            for connection in list(self.replica.connections):
                connection.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="replica-server", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        logger.info("replica serving %s at %s", self.scenario.scenario_id, self.base_url)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> ReplicaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
