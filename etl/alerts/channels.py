"""Where alerts go: the JSON-lines log (always), a JSON webhook, Slack and email.

Slack and email go through the Airflow providers' notifiers, called with `notify()` so
they work the same inside an Airflow task and from a plain `python -m etl` process.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import requests

from etl.alerts.model import Alert, AlertKind
from etl.alerts.settings import (
    delivery_retries,
    delivery_timeout,
    email_recipients,
    email_sender,
    slack_conn_id,
    smtp_conn_id,
    webhook_url,
)
from etl.config import USER_AGENT, alerts_file

logger = logging.getLogger(__name__)

# Slack is read on a phone: a few lines, the rest is in the email and the report.
SLACK_DETAIL_LINES = 5
_SLACK_EMOJI: dict[AlertKind, str] = {
    "quarantined": ":rotating_light:",
    "warning": ":warning:",
    "pipeline_failed": ":x:",
    "resolved": ":white_check_mark:",
}


class AlertDeliveryError(RuntimeError):
    """A channel could not deliver an alert; the message says where and why."""


class Channel(Protocol):
    """Somewhere an alert can be sent; `send` raises when it was not delivered."""

    @property
    def name(self) -> str: ...

    def send(self, alert: Alert) -> None: ...


@dataclass(frozen=True)
class JsonLinesChannel:
    """Appends one JSON object per alert to a local file: the record nothing else replaces."""

    path: Path
    name: str = "jsonl"

    def send(self, alert: Alert) -> None:
        """Append the alert as one line (one `write` on an O_APPEND file, so lines never mix)."""
        line = json.dumps(alert.to_record(_now()), ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(line.encode("utf-8"))
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


@dataclass(frozen=True)
class WebhookChannel:
    """POSTs the alert's JSON object to a URL, retrying connection errors, 429 and 5xx."""

    url: str
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    name: str = "webhook"

    def send(self, alert: Alert) -> None:
        """Deliver or raise `AlertDeliveryError` with the last answer (URL path redacted)."""
        body = alert.to_record(_now())
        attempts = 0
        last_error = ""
        while attempts <= self.retries:
            if attempts:
                time.sleep(self.backoff * 2 ** (attempts - 1))
            attempts += 1
            try:
                response = requests.post(
                    self.url, json=body, timeout=self.timeout, headers={"User-Agent": USER_AGENT}
                )
            except requests.RequestException as exc:
                last_error = f"{type(exc).__name__}: {self._redact(str(exc))}"
                continue
            if response.ok:
                return
            last_error = f"HTTP {response.status_code}: {response.text[:200]!r}"
            if response.status_code < 500 and response.status_code != 429:
                break  # any other 4xx will not get better by asking again
        raise AlertDeliveryError(
            f"webhook {self._redact(self.url)} failed after {attempts} attempt(s): {last_error}"
        )

    def _redact(self, text: str) -> str:
        # Webhook URLs often carry their secret in the path; logs must not.
        path = urlsplit(self.url).path
        return text.replace(path, "/…") if len(path) > 1 else text


@dataclass(frozen=True)
class SlackChannel:
    """Posts a short mrkdwn message through the Slack provider's incoming-webhook notifier."""

    conn_id: str
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    name: str = "slack"

    def send(self, alert: Alert) -> None:
        """Deliver through `SlackWebhookNotifier`; the URL comes from the Airflow connection."""
        # Imported here: Airflow is heavy and only needed when Slack is configured.
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
        from slack_sdk.http_retry.builtin_handlers import (
            ConnectionErrorRetryHandler,
            ServerErrorRetryHandler,
        )
        from slack_sdk.http_retry.builtin_interval_calculators import (
            BackoffRetryIntervalCalculator,
        )

        interval = BackoffRetryIntervalCalculator(backoff_factor=self.backoff)
        notifier = SlackWebhookNotifier(
            slack_webhook_conn_id=self.conn_id,
            text=slack_text(alert),
            unfurl_links=False,
            unfurl_media=False,
            timeout=math.ceil(self.timeout),
            retry_handlers=[
                ConnectionErrorRetryHandler(self.retries, interval_calculator=interval),
                ServerErrorRetryHandler(self.retries, interval_calculator=interval),
            ],
        )
        # notify(), not notifier(context): calling the notifier renders `text` as a Jinja
        # template first, and portal text containing "{{" must reach Slack unchanged.
        notifier.notify({})


@dataclass(frozen=True)
class EmailChannel:
    """Mails the alert through the SMTP provider's notifier and an Airflow `smtp` connection."""

    conn_id: str
    to: tuple[str, ...]
    from_email: str | None = None
    name: str = "email"

    def send(self, alert: Alert) -> None:
        """Deliver through `SmtpNotifier`; host, port, TLS and login come from the connection."""
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifier = SmtpNotifier(
            to=list(self.to),
            from_email=self.from_email,
            subject=email_subject(alert),
            html_content=email_html(alert),
            smtp_conn_id=self.conn_id,
        )
        notifier.notify({})  # not notifier(context): see SlackChannel.send


def configured_channels() -> list[Channel]:
    """The JSON-lines log first (always on), then every channel the environment enables."""
    channels: list[Channel] = [JsonLinesChannel(alerts_file())]
    timeout, retries = delivery_timeout(), delivery_retries()
    if url := webhook_url():
        channels.append(WebhookChannel(url, timeout=timeout, retries=retries))
    if conn_id := slack_conn_id():
        channels.append(SlackChannel(conn_id, timeout=timeout, retries=retries))
    if conn_id := smtp_conn_id():
        if recipients := email_recipients():
            channels.append(EmailChannel(conn_id, recipients, email_sender()))
        else:
            logger.error(
                "CEC_ALERT_SMTP_CONN_ID=%s is set but CEC_ALERT_EMAIL_TO is empty: "
                "email alerts are off until CEC_ALERT_EMAIL_TO lists recipients",
                conn_id,
            )
    return channels


def slack_text(alert: Alert) -> str:
    """Slack mrkdwn: headline, where and when, a few failing rows, the report's path."""
    # Every value may come from the portal: each is escaped, none can open a link or
    # a mention (`<!channel>`, `<http://…|…>`) in the reader's Slack.
    facts = [f"election `{_mrkdwn(alert.election_id)}`"]
    if alert.contest_id:
        facts.append(f"contest `{_mrkdwn(alert.contest_id)}`")
    if alert.checks:
        facts.append(f"checks {_mrkdwn(', '.join(alert.checks))}")
    if alert.portal_updated_at:
        facts.append(f"portal updated {_mrkdwn(alert.portal_updated_at)}")
    if alert.snapshot_id:
        facts.append(f"snapshot `{_mrkdwn(alert.snapshot_id)}`")
    lines = [f"{_SLACK_EMOJI[alert.kind]} *{_mrkdwn(alert.title)}*", " · ".join(facts)]
    if alert.details:
        lines += [f"• {_mrkdwn(d)}" for d in alert.details[:SLACK_DETAIL_LINES]]
        if len(alert.details) > SLACK_DETAIL_LINES:
            lines.append("• _… more in the email and the report_")
    else:
        # Without failing rows the message itself is what a reader needs to act on.
        lines += [f"> {_mrkdwn(line)}" for line in alert.message.splitlines()]
    if alert.report_path:
        lines.append(f"Report: `{_mrkdwn(alert.report_path)}`")
    return "\n".join(lines)


def email_subject(alert: Alert) -> str:
    """`[CEC jk2021] QUARANTINED list: C1 …`, on one line (a header cannot hold newlines)."""
    return " ".join(f"[CEC {alert.election_id}] {alert.title}".split())


def email_text(alert: Alert) -> str:
    """The plain-text mail body: message, every detail line, then the facts to look up."""
    parts = [alert.message]
    if alert.details:
        parts.append("Details:\n" + "\n".join(f"  - {d}" for d in alert.details))
    facts = [
        ("Election", alert.election_id),
        ("Contest", alert.contest_id or "all"),
        ("Checks", ", ".join(alert.checks) or "-"),
        ("Snapshot", alert.snapshot_id or "-"),
        ("Portal updated", alert.portal_updated_at or "-"),
        ("Report", alert.report_path or "-"),
        ("Alert key", alert.dedupe_key),
    ]
    parts.append("\n".join(f"{label + ':':<16}{value}" for label, value in facts))
    return "\n\n".join(parts) + "\n"


def email_html(alert: Alert) -> str:
    """The plain-text body in a <pre>: the SMTP provider only sends a text/html part."""
    return f'<pre style="white-space: pre-wrap">{html.escape(email_text(alert))}</pre>'


def _mrkdwn(text: str) -> str:
    # Slack reads &, < and > as markup ("<= 100.00" would start a link).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _now() -> datetime:
    return datetime.now(UTC)
