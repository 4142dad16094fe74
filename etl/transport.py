"""Keep-alive HTTP/1.1 connections to the portal, on the standard library's `http.client`.

A whole-portal crawl is ~5,000 requests (100,000 at the scale of issue 9), and the CPU a
request costs the client bounds every cycle on two cores: urllib3 spent ~0.2 ms a request
here on layers the crawl does not use (its pool manager, retry and timeout objects, header
dicts, decoders chosen per response), `http.client` alone ~0.1 ms (`python -m
bench.fetch_floor`). What the crawl needs from a transport is kept, and tested by
`tests/test_transport.py` and the hostile-portal corpus:

- keep-alive connections shared by threads (one connection per thread at a time);
- a request on a reused connection that the server had closed meanwhile is sent again,
  once, on a new connection (GET is idempotent; urllib3 did the same);
- connect and read timeouts per request, and a deadline per request that every read of
  the response waits no longer than: its status line, headers and chunk-size lines as
  well as its body, so a server trickling any of them a byte at a time (each within the
  read timeout) cannot hold a fetch past its deadline;
- bodies read as they arrive, gzip and deflate decoded incrementally, with the decoded
  size bounded by the caller's cap (a compressed bomb stops at the cap);
- a body shorter than its Content-Length, or a compressed stream cut short, is a
  `TransportError`, never a page;
- HTTP(S) proxies named by the environment (`http_proxy`, `https_proxy`, `no_proxy`), with
  basic credentials from the proxy URL;
- pipelining (`ConnectionPool.pipeline`, direct connections only): several GETs written
  at once on one connection, their responses read in turn. A page fetched before is
  asked again this way (`etl.fetch.PortalClient.revalidate`): a 304 then costs a fraction
  of a round trip on its own, on both ends.

Redirects, retries, deadlines and the size cap are the caller's (`etl.fetch`).
"""

from __future__ import annotations

import base64
import email.parser
import functools
import http.client
import io
import re
import socket
import ssl
import threading
import time
import types
import urllib.request
import zlib
from collections.abc import Generator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit


class TransportError(Exception):
    """A request failed in transport: connecting, sending, reading, or a truncated body."""


class TransportTimeout(TransportError):
    """A connect or a read waited longer than its timeout, or until the request's deadline
    (`deadline` true)."""

    def __init__(self, message: str, *, deadline: bool = False) -> None:
        super().__init__(message)
        self.deadline = deadline


class _DeadlinePassed(TimeoutError):
    """A read of the response reached the request's deadline."""


class _Decoder:
    """Incremental gzip / deflate decoding with a bound on what one call returns."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        # gzip: a header and a trailer; deflate: zlib-wrapped per the RFC, raw in practice
        # from some servers (decided on the first output, as urllib3 and browsers do).
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip"
                                           else zlib.MAX_WBITS)
        # deflate: what was fed before the first output, replayed as raw deflate if zlib's
        # header turns out wrong (one byte passes its check; the error comes later).
        self._undecided: bytes | None = b"" if encoding == "deflate" else None
        self._fed = False
        self._tail = b""
        self._later_member = False  # gzip: a complete member was decoded
        self._swallow = False  # gzip: bytes after the members that are not one, ignored

    @property
    def pending(self) -> bool:
        """Compressed input left over from the last call (its output hit the bound)."""
        return bool(self._tail)

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decode `data` (after any pending input); at most `limit` bytes are returned."""
        if self._swallow:
            self._tail = b""
            return b""
        data, self._tail = self._tail + data, b""
        self._fed = self._fed or bool(data)
        if self._undecided is not None:
            self._undecided += data
        try:
            out = self._inflate.decompress(data, limit)
        except zlib.error as exc:
            if self._undecided is not None:  # not zlib-wrapped: raw deflate, from the start
                replay, self._undecided = self._undecided, None
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.feed(replay, limit)
            if self._later_member:
                # Bytes after a complete gzip member that are not another member (padding):
                # ignored, as urllib3 and browsers do.
                self._swallow = True
                return b""
            raise TransportError(f"the {self.encoding} body cannot be decoded: {exc}") from None
        if out or self._inflate.eof:
            self._undecided = None
        self._tail = self._inflate.unconsumed_tail
        if self.encoding == "gzip" and self._inflate.eof and self._inflate.unused_data:
            # Several gzip members, one after the other: decode the next one as well.
            rest = self._inflate.unused_data
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._tail = rest
            self._later_member = True
        return out

    def finish(self) -> None:
        """The body ended: a compressed stream begun must have ended too (an empty body,
        a 304's or a HEAD's, is empty whatever its Content-Encoding says)."""
        if self._swallow:
            return
        if self._tail or (self._fed and not self._inflate.eof):
            raise TransportError(f"the {self.encoding} body ended before its compressed stream")


class _DeadlineReader(io.RawIOBase):
    """A connection's socket stream whose every read waits at most the read timeout and
    never past the request's deadline (epoch seconds)."""

    def __init__(self, stream: io.RawIOBase, sock: socket.socket, timeout: float,
                 deadline: float) -> None:
        # `stream` is the socket's own reader (`socket.makefile`): while it is open, the
        # socket stays open, as http.client expects of a response that outlives its
        # connection's close (a body read until the server closes).
        self._stream = stream
        self._sock = sock
        self._timeout = timeout
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int | None:  # type: ignore[override]
        left = self._deadline - time.time()
        if left <= 0:
            raise _DeadlinePassed("the deadline passed before the whole response had arrived")
        wait = min(self._timeout, left)
        if wait != self._sock.gettimeout():  # only near the deadline: the call costs syscalls
            self._sock.settimeout(wait)
        try:
            return self._stream.readinto(buffer)
        except TimeoutError:
            if wait < self._timeout:
                raise _DeadlinePassed("the deadline passed before the whole response had "
                                      "arrived") from None
            raise

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


# http.client reads every response's headers with the `email` package: ~40 µs a response
# here, the largest single part of what a re-fetched page costs a crawl worker. A header
# block of the plain shape web servers send (every line `Name: value` in printable ASCII,
# CRLF-ended, no folded lines, no multipart or message/* body type) is read directly into
# the same `HTTPMessage` the email parser would build (`tests/test_transport.py` compares
# them); any other block goes to the email parser, as http.client does.
_PLAIN_HEADER = re.compile(rb"([!-9;-~]+):[ \t]*([\t -~]*)\r\n")


def _parse_headers(fp: io.BufferedIOBase,
                   _class: type[http.client.HTTPMessage] = http.client.HTTPMessage,
                   ) -> http.client.HTTPMessage:
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # its line and count caps
    if lines[-1] == b"\r\n":
        message = _class()
        for line in lines[:-1]:
            plain = _PLAIN_HEADER.fullmatch(line)
            if plain is None:
                break
            message.set_raw(plain[1].decode("ascii"), plain[2].decode("ascii"))
        else:
            if message.get_content_maintype() not in ("multipart", "message"):
                message.set_payload("")
                return message
    parsed: http.client.HTTPMessage = email.parser.Parser(_class=_class).parsestr(
        b"".join(lines).decode("iso-8859-1"))
    return parsed


def _with_header_parser(begin: Any) -> Any:
    """`HTTPResponse.begin` reading headers with `_parse_headers` (the module-level
    function it calls, replaced for this class only, not for every http.client user)."""
    return types.FunctionType(begin.__code__, vars(http.client) | {"parse_headers": _parse_headers},
                              begin.__name__, begin.__defaults__, begin.__closure__)


class _DeadlineResponse(http.client.HTTPResponse):
    """`http.client`'s response, reading the socket through a `_DeadlineReader`: the status
    line, headers and chunk-size lines are read line by line, and without a deadline a
    line trickling in byte by byte would wait up to a read timeout per byte."""

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                 url: str | None = None, *, timeout: float, deadline: float) -> None:
        super().__init__(sock, debuglevel, method, url)
        stream = self.fp.detach()  # nothing read yet: its buffer is empty
        self.fp = io.BufferedReader(_DeadlineReader(stream, sock, timeout, deadline))

    begin = _with_header_parser(http.client.HTTPResponse.begin)


class _SharedStream:
    """Stands for a socket to `http.client.HTTPResponse`, which reads from
    `sock.makefile("rb")`: every response of a pipeline reads the same buffered stream (a
    stream of its own would swallow the responses after it)."""

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self._stream = stream

    def makefile(self, mode: str) -> io.BufferedIOBase:
        return self._stream


class _PipelinedResponse(http.client.HTTPResponse):
    """One response of a pipeline: reads the connection's shared stream and, once its body
    has been read, leaves that stream open for the next response."""

    begin = _with_header_parser(http.client.HTTPResponse.begin)

    def _close_conn(self) -> None:
        self.fp = None  # type: ignore[assignment]  # the stream is the next response's too


class Response:
    """A response whose headers have arrived; read the body with `read_some`, then `release`."""

    def __init__(self, raw: http.client.HTTPResponse, connection: http.client.HTTPConnection,
                 pool: ConnectionPool, *, pipelined: bool = False) -> None:
        self._raw = raw
        self._connection = connection
        self._pool = pool
        self._pipelined = pipelined
        self.status = raw.status
        self.headers = raw.headers
        # RFC 9112 §6.3: no body after a 204 or a 304, whatever Transfer-Encoding says
        # (http.client would wait for a chunk that never comes).
        self._bodiless = raw.status in (204, 304)
        self._ended = self._bodiless  # the body was read to its end
        encoding = (raw.headers.get("Content-Encoding") or "").strip().lower()
        encoding = "gzip" if encoding == "x-gzip" else encoding
        # Anything else (identity, none, or a coding we did not ask for) is passed as is.
        self._decoder = _Decoder(encoding) if encoding in ("gzip", "deflate") else None

    def read_some(self, amount: int, limit: int) -> bytes | None:
        """What of the body has arrived (up to `amount` bytes read, `limit` decoded), or
        None at its end. May return b"" (compressed bytes that decode to nothing yet), so a
        caller checking a deadline between calls sees a trickle as it arrives."""
        if self._ended:
            return None
        decoder = self._decoder
        if decoder is not None and decoder.pending:
            return decoder.feed(b"", limit)
        try:
            data = self._raw.read1(amount)
        except TimeoutError as exc:
            raise TransportTimeout(f"reading the body: {exc or 'timed out'}",
                                   deadline=isinstance(exc, _DeadlinePassed)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"reading the body: {exc!r}") from None
        if not data:
            left = self._raw.length
            if left:  # http.client returns b"" when the connection closes early
                raise TransportError(f"the body ended {left} bytes short of its Content-Length")
            if decoder is not None:
                decoder.finish()
            self._ended = True
            return None
        return data if decoder is None else decoder.feed(data, limit)

    @property
    def ended(self) -> bool:
        """Whether the body was read to its end (`read_some` gave None; none after a 204 or 304)."""
        return self._ended

    def release(self) -> None:
        """The body was read to its end: the connection goes back to the pool (a response
        of a pipeline: the pipeline puts it back after its last response)."""
        self._raw.close()
        if not self._pipelined:
            self._pool.put(self._connection)

    def discard(self) -> None:
        """Close the connection (a body not read to its end cannot be reused)."""
        self._raw.close()
        self._connection.close()


# A request on a pooled connection that fails with one of these found it closed by the
# server while it was idle (RemoteDisconnected is a ConnectionResetError): sent again, once,
# on a new connection (GET is idempotent).
_CLOSED_WHILE_IDLE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _transport_error(exc: OSError | http.client.HTTPException) -> TransportError:
    """A failed send, or read of a response's status line and headers, as the caller sees it."""
    if isinstance(exc, TimeoutError):
        return TransportTimeout(str(exc) or "timed out", deadline=isinstance(exc, _DeadlinePassed))
    return TransportError(f"{exc.__class__.__name__}: {exc}")


def _interim_response(status: int) -> TransportError:
    # http.client skips 100 Continue only; another 1xx (103 Early Hints) comes back as if
    # final, the real response still unread on the connection.
    return TransportError(f"an interim response ({status}) where a final one was expected")


# A request head `pipeline` writes itself: printable ASCII lines (no control character,
# no line break but the CRLFs that end them), the target without spaces.
_PRINTABLE_HEAD = re.compile(r"GET [!-~]+ HTTP/1\.1\r\n(?:[!-9;-~]+: [ -~]*\r\n)+\r\n")


class ConnectionPool:
    """Idle keep-alive connections to one origin, directly or through a proxy."""

    def __init__(self, base_url: str, size: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.size = size
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._proxy: tuple[str, int] | None = None
        self.proxy_headers: dict[str, str] = {}
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(self.host):
            self._use_proxy(proxy)

    def _use_proxy(self, proxy_url: str) -> None:
        proxy = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
        self._proxy = (proxy.hostname or "", proxy.port or 80)
        if proxy.username is not None:
            credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
            self.proxy_headers["Proxy-Authorization"] = (
                "Basic " + base64.b64encode(credentials.encode()).decode("ascii"))

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        if self._proxy is None:
            if self.scheme == "https":
                return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                   context=self._tls)
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        proxy_host, proxy_port = self._proxy
        if self.scheme == "https":  # a CONNECT tunnel through the proxy
            connection = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=timeout,
                                                     context=self._tls)
            connection.set_tunnel(self.host, self.port, headers=self.proxy_headers)
            return connection
        return http.client.HTTPConnection(proxy_host, proxy_port, timeout=timeout)

    def get(self, target: str, headers: dict[str, str], timeout: float,
            deadline: float | None = None) -> Response:
        """Send a GET for `target` (path and query) and wait for the response's headers.

        `timeout` bounds connecting and each read; `deadline` (epoch seconds), if given,
        every read of the response, body included: none waits past it.
        """
        if self._proxy is not None and self.scheme == "http":
            # A plain HTTP proxy is asked for the absolute URL.
            target = f"http://{self.host}:{self.port}{target}"
            headers = headers | self.proxy_headers
        # http.client calls `response_class(sock, method=…)`: a partial will do.
        factory: Any = (http.client.HTTPResponse if deadline is None else
                        functools.partial(_DeadlineResponse, timeout=timeout, deadline=deadline))
        for attempt in range(2):
            # Once a reused connection was found closed, the others idle as long may be too:
            # the second attempt is on a new connection.
            connection, reused = (self._take(timeout) if attempt == 0
                                  else (self._new(timeout), False))
            connection.response_class = factory
            try:
                connection.request("GET", target, headers=headers)
                raw = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused and isinstance(exc, _CLOSED_WHILE_IDLE):
                    continue  # closed by the server while idle in the pool: on a new one
                raise _transport_error(exc) from None
            if raw.status < 200:
                connection.close()
                raise _interim_response(raw.status)
            return Response(raw, connection, self)
        raise TransportError("the server closed a new connection as well")

    @property
    def can_pipeline(self) -> bool:
        """Whether `pipeline` may be used: on a direct connection, not through a proxy."""
        return self._proxy is None

    def pipeline(self, heads: Sequence[bytes], timeout: float,
                 deadline: float) -> Generator[Response, None, None]:
        """GETs (their `request_head`s) sent at once on one connection (HTTP/1.1
        pipelining); their responses yielded in order, each once its headers have arrived.

        Read each response's body to its end (`read_some` until None; a 204 or 304 has
        none) before asking for the next. Every read waits at most `timeout` and never past
        `deadline`. The pipeline ends early, without an error, after a response that closes
        the connection or one whose body was not read to its end (the connection is then
        closed, never pooled with bytes unread); a failure raises `TransportError`
        (`TransportTimeout` for a wait). Either way the requests not answered may not have
        been served: send them again the usual way. A pooled connection that the server
        closed while it was idle is replaced once, as in `get`.
        """
        if not self.can_pipeline:
            raise TransportError("requests through a proxy are not pipelined")
        data = b"".join(heads)
        for attempt in range(2):
            connection, reused = (self._take(timeout) if attempt == 0
                                  else (self._new(timeout), False))
            answered = 0
            finished = False
            try:
                stream = self._send_all(connection, data, timeout, deadline)
                for _ in heads:
                    raw = _PipelinedResponse(stream, method="GET")  # type: ignore[arg-type]
                    try:
                        raw.begin()
                    except (OSError, http.client.HTTPException) as exc:
                        if reused and not answered and isinstance(exc, _CLOSED_WHILE_IDLE):
                            break  # closed while idle: once more on a new connection
                        raise _transport_error(exc) from None
                    if raw.status < 200:
                        raise _interim_response(raw.status)
                    response = Response(raw, connection, self, pipelined=True)
                    yield response
                    answered += 1
                    if not response.ended or raw.will_close:
                        return  # a body not read to its end, or the server closes the connection
                else:
                    finished = True
                    return
            finally:
                if finished:
                    self.put(connection)
                else:
                    connection.close()
        raise TransportError("the server closed a new connection as well")

    @staticmethod
    def _send_all(connection: http.client.HTTPConnection, data: bytes, timeout: float,
                  deadline: float) -> _SharedStream:
        """Write the requests on the connection; the stream its responses are read from."""
        try:
            if connection.sock is None:
                connection.connect()
            sock = connection.sock
            sock.sendall(data)
        except TimeoutError as exc:
            raise TransportTimeout(f"sending: {exc or 'timed out'}") from None
        except OSError as exc:
            raise TransportError(f"sending: {exc.__class__.__name__}: {exc}") from None
        return _SharedStream(io.BufferedReader(_DeadlineReader(
            sock.makefile("rb", buffering=0), sock, timeout, deadline)))

    def request_head(self, target: str, headers: dict[str, str]) -> bytes | None:
        """A GET as `http.client` writes it (its Host header, then `headers`), for
        `pipeline`; None if it cannot be written as is (anything outside printable ASCII:
        `http.client` would refuse or encode it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != (443 if self.scheme == "https" else 80):
            host = f"{host}:{self.port}"
        head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        return head.encode("ascii") if _PRINTABLE_HEAD.fullmatch(head) else None

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused) or a new one; its timeouts set to `timeout`."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            return self._new(timeout), False
        connection.timeout = timeout
        if connection.sock is None:  # the last response asked to close it
            return connection, False
        connection.sock.settimeout(timeout)
        return connection, True

    def put(self, connection: http.client.HTTPConnection) -> None:
        """Keep a connection whose last response was read to its end, up to `size` idle."""
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(connection)
                return
        connection.close()

    def clear(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
