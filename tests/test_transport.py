"""The portal client's own HTTP transport (`etl.transport`) against raw sockets on loopback.

What the hostile corpus does not reach: connections the server closes while they are idle
in the pool, every content coding the client asks for, a compressed body that decodes
past the size cap or ends before its stream, and a proxy named by the environment.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from etl.archive import RawArchive
from etl.fetch import FetchError, PortalClient

PAGE = b"<!doctype html><html><body>" + b"<p>a line of the page</p>" * 400 + b"</body></html>"
# (request line, headers) -> (raw response bytes, close the connection after it); a list
# of byte strings is sent piece by piece, 50 ms apart.
Handler = Callable[[str, dict[str, str]], tuple[bytes | list[bytes], bool]]


def response(body: bytes, *headers: str, length: int | None = None) -> bytes:
    """A 200 with `body`, its Content-Length (or `length`) and `headers`."""
    head = ["HTTP/1.1 200 OK", "Content-Type: text/html; charset=utf-8",
            f"Content-Length: {len(body) if length is None else length}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class SocketServer:
    """A loopback server that reads requests on keep-alive connections and answers each
    with what `handler` returns; it counts connections and keeps every request seen."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SocketServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._listener.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(connection,), daemon=True).start()

    def _talk(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client closed its end first
            self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as incoming:
            while True:
                request_line = incoming.readline().decode("latin-1").strip()
                if not request_line:
                    return
                headers = {}
                while (line := incoming.readline().decode("latin-1").strip()):
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.requests.append((request_line, headers))
                raw, close = self.handler(request_line, headers)
                for n, piece in enumerate([raw] if isinstance(raw, bytes) else raw):
                    if n:
                        time.sleep(0.05)
                    connection.sendall(piece)
                if close:
                    return


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RawArchive]:
    store = RawArchive(tmp_path / "raw")
    yield store
    store.close()


def client(base_url: str, archive: RawArchive, **kwargs: object) -> PortalClient:
    return PortalClient(base_url, archive, retries=2, backoff_s=0.01, timeout=5.0, **kwargs)  # type: ignore[arg-type]


def test_a_connection_closed_while_idle_is_replaced_without_a_retry(
    archive: RawArchive, caplog: pytest.LogCaptureFixture,
) -> None:
    # The server promises keep-alive (no `Connection: close`) and closes every connection
    # after one response: each next request finds its pooled connection closed.
    with SocketServer(lambda _line, _headers: (response(PAGE), True)) as server:
        portal = client(server.base_url, archive)
        caplog.set_level(logging.WARNING, logger="etl.fetch")
        pages = [portal.fetch(f"/page/{n}") for n in range(4)]
        portal.close()
    assert [page.body for page in pages] == [PAGE] * 4
    assert server.connections == 4
    assert not [r for r in caplog.records if r.getMessage().startswith("retry")]


def test_every_idle_connection_closed_by_the_server_still_costs_no_retry(
    archive: RawArchive, caplog: pytest.LogCaptureFixture,
) -> None:
    # Two connections idle in the pool, both closed by the server (its keep-alive timeout
    # passed): the request finds one closed and goes on a new connection, not the other.
    def slow_then_close(_line: str, _headers: dict[str, str]) -> tuple[bytes, bool]:
        time.sleep(0.2)  # the two first requests overlap: two connections
        return response(PAGE), True

    with SocketServer(slow_then_close) as server:
        portal = client(server.base_url, archive)
        caplog.set_level(logging.WARNING, logger="etl.fetch")
        with ThreadPoolExecutor(2) as threads:
            list(threads.map(portal.fetch, ["/a", "/b"]))
        assert len(portal.pool._idle) == 2
        assert portal.fetch("/c").body == PAGE
        portal.close()
    assert server.connections == 3
    assert not [r for r in caplog.records if r.getMessage().startswith("retry")]


def test_an_interim_response_never_shifts_answers_to_the_next_request(archive: RawArchive) -> None:
    # 103 Early Hints before /a's page: read as final, it would leave /a's 200 in the socket
    # for whatever was asked next on the connection.
    def early_hints_on_a(line: str, _headers: dict[str, str]) -> tuple[bytes, bool]:
        path = line.split()[1]
        page = response(f"page of {path}".encode())
        if path == "/a":
            return b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + page, False
        return page, False

    with SocketServer(early_hints_on_a) as server:
        portal = client(server.base_url, archive)
        with pytest.raises(FetchError, match="interim response"):
            portal.fetch("/a")
        assert portal.fetch("/b").body == b"page of /b"
        assert portal.fetch("/c").body == b"page of /c"
        portal.close()


def test_a_304_with_transfer_encoding_chunked_has_no_body_to_wait_for(archive: RawArchive) -> None:
    def etag_then_304(_line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        if headers.get("if-none-match") == '"v1"':
            return (b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"), False
        return response(PAGE, 'ETag: "v1"'), False

    with SocketServer(etag_then_304) as server:
        portal = client(server.base_url, archive)
        portal.fetch("/page")
        again = portal.fetch("/page")
        again_on_the_same_connection = portal.fetch("/page")
        portal.close()
    assert again.not_modified and again.body == PAGE
    assert again_on_the_same_connection.not_modified
    assert len(server.requests) == 3  # no retry
    assert server.connections == 1


def test_keep_alive_connections_are_reused(archive: RawArchive) -> None:
    with SocketServer(lambda _line, _headers: (response(PAGE), False)) as server:
        portal = client(server.base_url, archive)
        for n in range(5):
            portal.fetch(f"/page/{n}")
        portal.close()
    assert server.connections == 1
    assert len(server.requests) == 5


def _raw_deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


@pytest.mark.parametrize(("coding", "encode"), [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("gzip", lambda body: gzip.compress(body[:1000]) + gzip.compress(body[1000:])),  # two members
    ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
    ("deflate", _raw_deflate),  # raw, as some servers send it
])
def test_every_content_coding_asked_for_is_decoded(
    archive: RawArchive, coding: str, encode: Callable[[bytes], bytes],
) -> None:
    encoded = encode(PAGE)
    with SocketServer(lambda _line, _headers: (
            response(encoded, f"Content-Encoding: {coding}"), False)) as server:
        portal = client(server.base_url, archive)
        page = portal.fetch("/page")
        portal.close()
    assert page.body == PAGE
    assert server.requests[0][1]["accept-encoding"] == "gzip, deflate"
    assert archive.read(page.sha256) == PAGE


def test_raw_deflate_is_recognised_when_its_first_byte_arrives_alone(archive: RawArchive) -> None:
    encoded = _raw_deflate(PAGE)
    head = response(encoded, "Content-Encoding: deflate")[: -len(encoded)]
    with SocketServer(lambda _line, _headers: (
            [head + encoded[:1], encoded[1:]], False)) as server:
        portal = client(server.base_url, archive)
        page = portal.fetch("/page")
        portal.close()
    assert page.body == PAGE


def test_padding_after_the_gzip_members_is_ignored(archive: RawArchive) -> None:
    padded = gzip.compress(PAGE) + b"\0" * 16
    with SocketServer(lambda _line, _headers: (
            response(padded, "Content-Encoding: gzip"), False)) as server:
        portal = client(server.base_url, archive)
        page = portal.fetch("/page")
        portal.close()
    assert page.body == PAGE


def test_a_compressed_body_past_the_cap_is_refused_at_the_cap(archive: RawArchive) -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB on the wire, 50 MB decoded
    with SocketServer(lambda _line, _headers: (
            response(bomb, "Content-Encoding: gzip"), False)) as server:
        portal = client(server.base_url, archive, max_bytes=100_000)
        with pytest.raises(FetchError, match="cap") as refused:
            portal.fetch("/page")
        portal.close()
    assert refused.value.reason.startswith("refused: ")
    assert len(server.requests) == 1  # refused, not retried


def test_a_compressed_stream_cut_short_is_a_failure_not_a_page(archive: RawArchive) -> None:
    whole = gzip.compress(PAGE)
    cut = whole[: len(whole) // 2]  # the Content-Length matches what is sent
    with SocketServer(lambda _line, _headers: (
            response(cut, "Content-Encoding: gzip"), False)) as server:
        portal = client(server.base_url, archive)
        with pytest.raises(FetchError, match="ended before its compressed stream"):
            portal.fetch("/page")
        portal.close()
    assert len(server.requests) == 3  # retried, as any truncated body
    assert archive.latest(f"{server.base_url}/page") is None


def test_a_body_short_of_its_content_length_is_a_failure(archive: RawArchive) -> None:
    with SocketServer(lambda _line, _headers: (
            response(PAGE[:500], length=len(PAGE)), True)) as server:
        portal = client(server.base_url, archive)
        with pytest.raises(FetchError, match="short of its Content-Length"):
            portal.fetch("/page")
        portal.close()
    assert archive.latest(f"{server.base_url}/page") is None


TRICKLED_HEAD = response(PAGE).split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"


@pytest.mark.parametrize("pieces", [
    # the status line and headers, one byte every 50 ms (~5 s in all)
    [bytes([byte]) for byte in TRICKLED_HEAD] + [PAGE],
    # a chunked body whose first chunk-size line is padded with zeros, trickled
    [b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n",
     *[b"0"] * 90, f"{len(PAGE):x}\r\n".encode() + PAGE + b"\r\n0\r\n\r\n"],
], ids=["head", "chunk-size-line"])
def test_a_response_trickled_line_by_line_ends_at_the_request_deadline(
        archive: RawArchive, pieces: list[bytes]) -> None:
    # Every byte arrives well within the read timeout, so only the request's deadline can
    # end the fetch; http.client reads these lines byte by byte until each one is whole.
    assert 0.05 * len(pieces) > 4
    with SocketServer(lambda _line, _headers: (pieces, True)) as server:
        portal = client(server.base_url, archive, request_deadline=1.0)
        started = time.monotonic()
        with pytest.raises(FetchError, match="deadline"):
            portal.fetch("/page")
        elapsed = time.monotonic() - started
        portal.close()
    assert elapsed < 2.5
    assert archive.latest(f"{server.base_url}/page") is None


def test_pages_go_through_the_proxy_the_environment_names(
    archive: RawArchive, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The proxy answers for the portal itself: what matters is what it was asked.
    with SocketServer(lambda _line, _headers: (response(PAGE), False)) as proxy:
        monkeypatch.setenv("http_proxy", f"http://night%20shift:s3cret@127.0.0.1:{proxy.port}")
        monkeypatch.setenv("no_proxy", "")
        portal = client("http://portal.invalid:8080", archive)
        page = portal.fetch("/ru/results/jk2021/")
        portal.close()
    assert page.body == PAGE
    request_line, headers = proxy.requests[0]
    assert request_line == "GET http://portal.invalid:8080/ru/results/jk2021/ HTTP/1.1"
    assert headers["host"] == "portal.invalid:8080"
    assert headers["proxy-authorization"] == "Basic bmlnaHQgc2hpZnQ6czNjcmV0"  # night shift:s3cret


def test_a_host_in_no_proxy_is_reached_directly(
    archive: RawArchive, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with SocketServer(lambda _line, _headers: (response(PAGE), False)) as portal_server:
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        portal = client(portal_server.base_url, archive)
        assert portal.fetch("/page").body == PAGE
        portal.close()
    assert portal_server.requests[0][0] == "GET /page HTTP/1.1"


@pytest.mark.parametrize("block", [
    b"Content-Type: text/html; charset=utf-8\r\nContent-Length: 12\r\nETag: \"x\"\r\n\r\n",
    b"X-A:  leading spaces, trailing kept  \r\nX-B:\t\ttab\t\r\nX-Empty:\r\nX-Empty-2: \r\n\r\n",
    b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nSET-COOKIE: c=3\r\n\r\n",  # repeated names
    b"\r\n",  # no headers at all
    b"X-Folded: one\r\n two\r\nX-After: 1\r\n\r\n",  # obsolete line folding
    b"X-Latin: caf\xe9\r\n\r\n",  # not ASCII
    b"X-LF: bare\nX-Next: 1\r\n\r\n",  # a bare LF line
    b"X-CR: bare\rcarriage\r\n\r\n",  # a CR inside a value
    b"no colon here\r\nX-A: 1\r\n\r\n",
    b": empty name\r\nX-A: 1\r\n\r\n",
    b"From someone\r\nX-A: 1\r\n\r\n",
    b" X-Leading: space\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=z\r\n\r\n",
    b"Content-Type:  Message/RFC822\r\n\r\n",
    b"Content-Type: text/html\r\nX-Cut: no end",  # the connection closed in the headers
])
def test_the_plain_header_reader_builds_the_message_the_email_parser_builds(block: bytes) -> None:
    import http.client
    import io

    from etl.transport import _parse_headers

    def described(message: Any) -> dict[str, Any]:
        # Every attribute; defects by type and sub-messages described alike (neither
        # compares equal to another object of its kind).
        payload = message._payload
        return vars(message) | {
            "defects": [type(defect) for defect in message.defects],
            "_payload": [described(part) for part in payload] if isinstance(payload, list)
            else payload}

    ours, theirs = io.BytesIO(block + b"BODY"), io.BytesIO(block + b"BODY")
    assert described(_parse_headers(ours)) == described(http.client.parse_headers(theirs))
    assert ours.read() == theirs.read()  # both stop at the same byte: the body's first


def test_responses_read_their_headers_with_the_plain_reader() -> None:
    from etl.transport import _DeadlineResponse, _parse_headers

    # The fetches' responses use it (the begin() of http.client with that one name bound).
    assert _DeadlineResponse.begin.__globals__["parse_headers"] is _parse_headers


def test_a_304_leaves_the_archived_body_unread_until_asked(
        archive: RawArchive, tmp_path: Path) -> None:
    def etag_then_304(_line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        if headers.get("if-none-match") == '"v1"':
            return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', False
        return response(PAGE, 'ETag: "v1"'), False

    with SocketServer(etag_then_304) as server:
        portal = client(server.base_url, archive)
        first = portal.fetch("/page")
        # Packs gone: a 304 that read its body from the archive would fail here.
        (tmp_path / "raw" / "packs").rename(tmp_path / "packs-away")
        again = portal.fetch("/page")
        portal.close()
    assert again.not_modified and again.sha256 == first.sha256
    with pytest.raises(FileNotFoundError):
        _ = again.body
    (tmp_path / "packs-away").rename(tmp_path / "raw" / "packs")
    assert again.body == PAGE


def _versioned(changed: set[str]) -> Handler:
    """ETag "v1" for every page; a page in `changed` is "v2" (a new body) when asked again."""
    def answer(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        path = line.split()[1]
        tag = '"v2"' if path in changed and headers.get("if-none-match") else '"v1"'
        if headers.get("if-none-match") == tag:
            return f"HTTP/1.1 304 Not Modified\r\nETag: {tag}\r\n\r\n".encode(), False
        return response(f"{path} {tag}".encode(), f"ETag: {tag}"), False
    return answer


def test_pages_fetched_before_are_asked_again_at_once_on_one_connection(
        archive: RawArchive) -> None:
    paths = [f"/p/{n}" for n in range(6)]
    with SocketServer(_versioned({"/p/2"})) as server:
        portal = client(server.base_url, archive)
        first = [portal.fetch(path) for path in paths]
        again = portal.revalidate([*paths, "/never-fetched"])
        portal.fetch(paths[0])  # on the connection the pipeline gave back to the pool
        portal.close()
    assert again[-1] is None  # nothing archived to ask about: `fetch` will get it
    settled = again[:-1]
    assert all(page is not None for page in settled)
    assert [page.not_modified for page in settled if page] == [True, True, False, True, True, True]
    changed = settled[2]
    assert changed is not None and changed.body == b'/p/2 "v2"'
    assert archive.latest(changed.url).sha256 == changed.sha256  # archived like a fetch
    for before, now in zip(first, settled, strict=True):
        if now is not None and now.not_modified:
            assert (now.url, now.sha256, now.body) == (before.url, before.sha256, before.body)
    assert server.connections == 1  # the pipeline took the pooled connection and gave it back
    assert [line.split()[1] for line, _ in server.requests[6:12]] == paths


def test_a_pipelined_batch_appends_its_index_lines_in_one_write(
        archive: RawArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [f"/p/{n}" for n in range(5)]
    writes: list[list[str]] = []
    append = archive._append_index

    def recorded(lines: list[str]) -> None:
        writes.append([json.loads(line)["url"].rsplit("/", 2)[-1] for line in lines])
        append(lines)

    with SocketServer(_versioned({"/p/1", "/p/3", "/p/4"})) as server:
        portal = client(server.base_url, archive)
        for path in paths:
            portal.fetch(path)
        monkeypatch.setattr(archive, "_append_index", recorded)
        again = portal.revalidate(paths)
        portal.close()
    assert [page.not_modified for page in again if page] == [True, False, True, False, False]
    assert writes == [["1", "3", "4"]]  # the three new bodies' lines, in order, at once


def test_a_pipeline_on_a_connection_closed_while_idle_goes_again_on_a_new_one(
        archive: RawArchive) -> None:
    # Keep-alive promised, every connection closed after one response: the pipeline's
    # pooled connection is dead; sent again on a new one, its first answer arrives.
    def close_after_one(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        if headers.get("if-none-match") == '"v1"':
            return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', True
        return response(line.split()[1].encode(), 'ETag: "v1"'), True

    with SocketServer(close_after_one) as server:
        portal = client(server.base_url, archive)
        portal.fetch("/a")
        portal.fetch("/b")
        again = portal.revalidate(["/a", "/b"])
        portal.close()
    assert again[0] is not None and again[0].not_modified
    assert again[1] is None  # the server closed the connection after /a's answer
    assert server.connections == 3


def test_a_pipeline_that_runs_out_of_time_keeps_pipelining_on(archive: RawArchive) -> None:
    def slow_second(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        if headers.get("if-none-match") == '"v1"':
            if line.split()[1] == "/b":
                time.sleep(1.0)
            return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', False
        return response(line.split()[1].encode(), 'ETag: "v1"'), False

    with SocketServer(slow_second) as server:
        portal = PortalClient(server.base_url, archive, retries=0, timeout=5.0,
                              request_deadline=0.5)
        portal.fetch("/a")
        portal.fetch("/b")
        again = portal.revalidate(["/a", "/b"])
        assert again[0] is not None and again[1] is None  # /b's answer came after the deadline
        assert portal._pipelining  # the deadline, not a server leaving requests unanswered
        portal.close()


class OneAnswerPerRead:
    """A server that answers only the first request of whatever one read brings, as a
    server without pipelining may: requests sent together wait for ever."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.answered: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                threading.Thread(target=self._talk, args=(connection,), daemon=True).start()

    def _talk(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError), connection:
            while (data := connection.recv(65_536)):
                path = data.split(b" ", 2)[1].decode()
                self.answered.append(path)
                tagged = b"If-None-Match" in data
                connection.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n' if tagged
                                   else response(path.encode(), 'ETag: "v1"'))

    def close(self) -> None:
        self._listener.close()


def test_a_server_that_leaves_pipelined_requests_unanswered_gets_them_one_by_one(
        archive: RawArchive, caplog: pytest.LogCaptureFixture) -> None:
    server = OneAnswerPerRead()
    portal = PortalClient(server.base_url, archive, retries=0, timeout=0.5)
    paths = ["/a", "/b", "/c"]
    for path in paths:
        portal.fetch(path)
    caplog.set_level(logging.INFO, logger="etl.fetch")
    again = portal.revalidate(paths)
    # /a was answered; /b and /c, sent with it, never were: left to `fetch`, and this
    # client pipelines no more.
    assert again[0] is not None and again[0].not_modified
    assert again[1:] == [None, None]
    assert any("fetching one by one" in r.getMessage() for r in caplog.records)
    assert portal.revalidate(paths) == [None, None, None]
    assert all(portal.fetch(path).not_modified for path in paths[1:])
    portal.close()
    server.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 301 Moved Permanently\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nConnection: close\r\n\r\n',
])
def test_a_pipeline_stops_at_an_answer_it_cannot_settle_and_fetch_gets_the_rest(
        archive: RawArchive, answer: bytes) -> None:
    asked: dict[str, int] = {}

    def odd_second_time(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        path = line.split()[1]
        asked[path] = asked.get(path, 0) + 1
        if path == "/b" and asked[path] == 2:
            return answer, b"Connection: close" in answer
        if headers.get("if-none-match") == '"v1"':
            return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', False
        return response(path.encode(), 'ETag: "v1"'), False

    with SocketServer(odd_second_time) as server:
        portal = client(server.base_url, archive)
        for path in ("/a", "/b", "/c"):
            portal.fetch(path)
        again = portal.revalidate(["/a", "/b", "/c"])
        assert again[0] is not None and again[0].not_modified
        if b"304" in answer:  # settled, but the server closed the connection after it
            assert again[1] is not None and again[1].not_modified and again[2] is None
        else:
            assert again[1:] == [None, None]
        assert portal.fetch("/c").not_modified  # on a new connection
        portal.close()


def test_a_crawl_worker_keeps_its_batch_in_order_when_some_pages_were_fetched_before(
        archive: RawArchive) -> None:
    # Pages 1, 3 and 4 are asked again together (304s), the others one by one (200s, not
    # division pages: failures, each under its own URL).
    from etl import crawl

    with SocketServer(_versioned(set())) as server:
        portal = client(server.base_url, archive)
        for path in ("/p/1", "/p/3", "/p/4"):
            portal.fetch(path)
        portal.close()
        crawl._source = client(server.base_url, archive)
        try:
            outcomes = crawl._visit_batch([f"/p/{n}" for n in range(6)])
        finally:
            crawl._close_source()
        seen = len(server.requests)
    assert [urlsplit(o.url).path for o in outcomes] == [f"/p/{n}" for n in range(6)]
    assert [o.not_modified for o in outcomes] == [False, True, False, True, True, False]
    assert seen == 3 + 6


def test_a_request_that_cannot_be_written_as_is_is_left_to_fetch_alone(
        archive: RawArchive) -> None:
    # /a's validator is not printable ASCII: its conditional request is not pipelined (the
    # others are), and `fetch` asks for it as http.client writes it.
    def tagged(line: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        path = line.split()[1]
        tag = '"caf\xe9"' if path == "/a" else f'"{path}"'
        if headers.get("if-none-match") == tag:
            return f"HTTP/1.1 304 Not Modified\r\nETag: {tag}\r\n\r\n".encode("latin-1"), False
        return response(path.encode(), f"ETag: {tag}").replace(b"\xc3\xa9", b"\xe9"), False

    with SocketServer(tagged) as server:
        portal = client(server.base_url, archive)
        for path in ("/a", "/b", "/c"):
            portal.fetch(path)
        asked = len(server.requests)
        again = portal.revalidate(["/a", "/b", "/c"])
        assert again[0] is None
        assert again[1] is not None and again[2] is not None and again[2].not_modified
        assert [line.split()[1] for line, _ in server.requests[asked:]] == ["/b", "/c"]
        assert portal.fetch("/a").not_modified
        portal.close()
