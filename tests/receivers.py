"""Real servers on loopback for tests: an HTTP server, and receivers for alerts.

`LoopbackHttpServer` serves any request handler on 127.0.0.1 (a port from the OS) in a
thread: a static site, a hand-made portal page. `HttpReceiver` captures POSTs (a generic
webhook and Slack's incoming webhook alike); `SmtpReceiver` is an aiosmtpd server capturing
mail. All are context managers; a test module wraps them in fixtures named for what they
stand in for (`webhook`, `slack`).
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port nothing listens on right now (also a target for "connection refused")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackHttpServer:
    """A threaded HTTP server on 127.0.0.1 answering with `handler`, serving while entered."""

    def __init__(self, handler: Callable[..., BaseHTTPRequestHandler]) -> None:
        # Bound here, so the port is known before the server is entered.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class CapturedRequest:
    """One request the HTTP receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class HttpReceiver:
    """A threaded HTTP server on 127.0.0.1 that records every POST and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status  # change it while running to simulate an outage
        self.requests: list[CapturedRequest] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append(
                        CapturedRequest("POST", self.path, dict(self.headers.items()), body)
                    )
                answer = b"ok" if receiver.status < 400 else b"receiver says no"
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http receiver: " + format, *args)

        self._server = LoopbackHttpServer(Handler)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._server.port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (append any path: every path is captured)."""
        return self._server.url

    def posts(self, path: str | None = None) -> list[CapturedRequest]:
        """The POSTs received so far, optionally only those to `path`."""
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def __enter__(self) -> HttpReceiver:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


class _MailCollector:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.receiver._lock:
            self.receiver.messages.append(message)
            self.receiver.envelopes.append(
                (str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos])
            )
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """An aiosmtpd SMTP server on 127.0.0.1 (no TLS, no auth) that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        # aiosmtpd's Controller checks readiness by connecting to its port, so port 0
        # cannot be used: take a free port first.
        self.port = free_port()
        self._controller = Controller(_MailCollector(self), hostname="127.0.0.1", port=self.port)

    @property
    def host(self) -> str:
        """Always the loopback address."""
        return "127.0.0.1"

    def __enter__(self) -> SmtpReceiver:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


def mail_text(message: EmailMessage) -> str:
    """Every text part of a message, decoded and joined (HTML parts included, as markup)."""
    parts = message.walk() if message.is_multipart() else iter([message])
    texts = []
    for part in parts:
        if part.get_content_maintype() == "text" and isinstance(part, EmailMessage):
            texts.append(str(part.get_content()))
    return "\n".join(texts)


def alert_channel_env(webhook: HttpReceiver, slack: HttpReceiver, smtp: SmtpReceiver) -> dict[str, str]:
    """Environment that sends the pipeline's alerts to these receivers on every channel
    (the webhook at `/hook`, Slack as an Airflow connection, email through SMTP)."""
    return {
        "CEC_ALERT_WEBHOOK_URL": f"{webhook.url}/hook",
        "CEC_ALERT_SLACK_CONN_ID": "cec_slack",
        "AIRFLOW_CONN_CEC_SLACK": json.dumps(
            {"conn_type": "slackwebhook", "host": slack.url, "password": "T0/B0/token"}),
        "CEC_ALERT_SMTP_CONN_ID": "cec_smtp",
        "AIRFLOW_CONN_CEC_SMTP": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp.port,
            "extra": {"disable_tls": True, "disable_ssl": True}}),
        "CEC_ALERT_EMAIL_TO": "oncall@example.org",
        "CEC_ALERT_EMAIL_FROM": "cec-etl@example.org",
    }
