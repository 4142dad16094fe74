"""A hostile copy of the portal on loopback: the replica's pages, mutated per case.

`HostileServer(mutate)` serves what `etl.replica`'s renderer renders for the final snapshot
of `kg2021`, passed through `mutate(path, response)` first. A case can change the status,
headers or body, send the body one byte at a time, hold it, drop the Content-Length or
answer a path the renderer does not know. A real HTTP server (the standard library's
threading server), so the pipeline's client meets real sockets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from etl.replica import load_scenario
from etl.replica.render import PortalRenderer


@dataclass(frozen=True)
class Response:
    """What the hostile server sends for one request."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    trickle: float = 0.0  # seconds between body bytes (0: all at once)
    hang: float = 0.0  # seconds before anything is sent
    content_length: bool = True  # False: no Content-Length, the connection closes after
    truncate: bool = False  # announce the whole body, send half of it, close

    def with_body(self, body: bytes) -> Response:
        """The same response with another body."""
        return replace(self, body=body)

    def header(self, name: str) -> str | None:
        """A header's value (case-insensitive), if set."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def with_header(self, name: str, value: str) -> Response:
        """The response with `name` set to `value` (replacing it)."""
        kept = tuple((k, v) for k, v in self.headers if k.lower() != name.lower())
        return replace(self, headers=(*kept, (name, value)))


Mutation = Callable[[str, Response], Response]


def unchanged(path: str, response: Response) -> Response:
    """The identity mutation: the replica's page as it is."""
    return response


@dataclass
class HitLog:
    """Paths requested, in order (thread-safe enough for counting)."""

    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str) -> int:
        """Record a request; return how many times this path has been asked for."""
        with self.lock:
            self.paths.append(path)
            return self.paths.count(path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.hits.add(self.path)
        split = urlsplit(self.path)
        page = owner.renderer.render(owner.index, split.path, split.query)
        if page is None:
            base = Response(404, b"not found\n", (("Content-Type", "text/plain; charset=utf-8"),))
        else:
            headers = [("Content-Type", page.content_type), ("ETag", page.etag),
                       ("Last-Modified", page.last_modified)]
            if page.retry_after is not None:
                headers.append(("Retry-After", str(page.retry_after)))
            base = Response(page.status, page.body, tuple(headers))
        response = owner.mutate(self.path, base)
        self._send(response)

    def _send(self, response: Response) -> None:
        if response.hang:
            time.sleep(response.hang)
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.content_length:
            self.send_header("Content-Length", str(len(response.body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            if response.truncate:
                self.wfile.write(response.body[: len(response.body) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif response.trickle > 0:
                for i in range(len(response.body)):
                    self.wfile.write(response.body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(response.trickle)
                    if self.server.owner.stopping.is_set():
                        return
            else:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the pipeline's own logs say what it did


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HostileServer


class HostileServer:
    """`with HostileServer(mutate) as portal: portal.base_url …` (an ephemeral port)."""

    def __init__(self, mutate: Mutation = unchanged, *, at: str = "final") -> None:
        self.scenario = load_scenario("kg2021")
        self.renderer = PortalRenderer(self.scenario)
        self.index = self.scenario.resolve(at)
        self.mutate = mutate
        self.hits = HitLog()
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """E.g. `http://127.0.0.1:40123`."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HostileServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="hostile-portal")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; trickling answers give up at their next byte."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
