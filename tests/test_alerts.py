"""Alerts: what they say, that each channel delivers to a real receiver, and that each
problem reaches people once (deduplication, resolution, failure streaks, concurrency)."""

from __future__ import annotations

import html
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from receivers import HttpReceiver, SmtpReceiver, free_port, mail_text

from etl.alerts import (
    Alert,
    AlertBook,
    EmailChannel,
    JsonLinesChannel,
    Scope,
    SlackChannel,
    WebhookChannel,
    alert_on_failed_run,
    alert_on_snapshot,
    alert_on_unchanged_portal,
    alerts_for_pipeline_failure,
    alerts_for_snapshot,
    configured_channels,
    dispatch,
)
from etl.schema import DQ_RESULTS, typed_frame

REPO_ROOT = Path(__file__).resolve().parent.parent
PORTAL_TIME = "2021-11-28T22:15:00+06:00"
REPORT = "data/reports/jk2021/snap-140.html"
ALERT_ENV = (
    "CEC_ALERTS_FILE", "CEC_ALERT_STATE_FILE", "CEC_ALERT_AFTER_FAILED_RUNS",
    "CEC_ALERT_WEBHOOK_URL", "CEC_ALERT_SLACK_CONN_ID", "CEC_ALERT_SMTP_CONN_ID",
    "CEC_ALERT_EMAIL_TO", "CEC_ALERT_EMAIL_FROM", "CEC_ALERT_TIMEOUT", "CEC_ALERT_RETRIES",
)


# --- quality results as the gate writes them ------------------------------------------

def dq_row(check_id: str, contest_id: str, division_id: str | None, observed: str,
           expected: str, message: str, *, success: bool = False,
           choice_position: int | None = None, snapshot_id: str = "snap-140") -> dict[str, Any]:
    severity = "critical" if check_id.startswith("C") else "warning"
    return {
        "snapshot_id": snapshot_id, "check_id": check_id, "severity": severity,
        "success": success, "contest_id": contest_id, "division_id": division_id,
        "choice_position": choice_position, "observed": observed, "expected": expected,
        "message": message,
    }


def c1_rows(contest_id: str = "list") -> list[dict[str, Any]]:
    """The 140% incident: percentages at the root sum to 143.27%, plus the summary row."""
    return [
        dq_row("C1", contest_id, None, "1", "0", "1 of 8 divisions over 100%"),
        dq_row("C1", contest_id, "0", "143.27", "<= 100.00",
               "published percentages sum to 143.27%"),
    ]


def w2_rows(contest_id: str = "okrug-7") -> list[dict[str, Any]]:
    """An annulment: votes of line №3 went down since the previous published snapshot."""
    return [
        dq_row("W2", contest_id, None, "1", "0", "1 cumulative figure went down"),
        dq_row("W2", contest_id, "okrug-7-12", "4180", ">= 4310",
               "votes went down from 4310 to 4180", choice_position=3),
    ]


def passing_rows(contest_id: str) -> list[dict[str, Any]]:
    return [dq_row("C1", contest_id, None, "0", "0", "", success=True),
            dq_row("W2", contest_id, None, "0", "0", "", success=True)]


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return typed_frame(rows, DQ_RESULTS)


def meta(snapshot_id: str = "snap-140", portal_time: str = PORTAL_TIME) -> dict[str, Any]:
    return {"snapshot_id": snapshot_id, "election_id": "jk2021",
            "portal_updated_at": portal_time, "failures": []}


DIVISIONS = pd.DataFrame([
    {"contest_id": "list", "division_id": "0", "name": "Кыргызская Республика"},
    {"contest_id": "okrug-7", "division_id": "okrug-7-12", "name": "УИК №1012"},
])


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mail_body(message: Any) -> str:
    """The plain text inside the <pre> the SMTP provider's text/html part carries."""
    return html.unescape(re.sub(r"<[^>]+>", "", mail_text(message)))


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def alert_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every alert file under a fresh data dir; no alert setting leaks in from outside."""
    for name in ALERT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CEC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CEC_ALERT_RETRIES", "1")
    return tmp_path / "data"


@pytest.fixture
def providers() -> None:
    """Import the Airflow notifiers before a test body runs.

    Airflow replaces the root log handlers on first import; done in setup, pytest's
    log capture for the test body is installed after it and sees our records.
    """
    importlib.import_module("airflow.providers.slack.notifications.slack_webhook")
    importlib.import_module("airflow.providers.smtp.notifications.smtp")


@pytest.fixture
def webhook() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def slack() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        yield receiver


SLACK_TOKEN_PATH = "/T0001/B0001/loopbacktoken"


def slack_connection(monkeypatch: pytest.MonkeyPatch, receiver: HttpReceiver) -> str:
    """A `slackwebhook` connection from the environment, pointing at the loopback receiver.

    The hook takes the endpoint from `host` (a full `http://host:port`, since it ignores
    the port field) and appends the token from `password`.
    """
    conn_id = f"cec_slack_{receiver.port}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "slackwebhook", "host": receiver.url, "password": SLACK_TOKEN_PATH.lstrip("/"),
    }))
    return conn_id


def smtp_connection(monkeypatch: pytest.MonkeyPatch, receiver: SmtpReceiver) -> str:
    """An `smtp` connection from the environment: loopback, plain SMTP (no TLS, no SSL)."""
    conn_id = f"cec_smtp_{receiver.port}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "smtp", "host": receiver.host, "port": receiver.port,
        "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 5, "retry_limit": 0},
    }))
    return conn_id


def configure_all(monkeypatch: pytest.MonkeyPatch, webhook: HttpReceiver,
                  slack: HttpReceiver, smtp: SmtpReceiver) -> None:
    monkeypatch.setenv("CEC_ALERT_WEBHOOK_URL", f"{webhook.url}/hooks/cec")
    monkeypatch.setenv("CEC_ALERT_SLACK_CONN_ID", slack_connection(monkeypatch, slack))
    monkeypatch.setenv("CEC_ALERT_SMTP_CONN_ID", smtp_connection(monkeypatch, smtp))
    monkeypatch.setenv("CEC_ALERT_EMAIL_TO", "oncall@example.org, data-team@example.org")
    monkeypatch.setenv("CEC_ALERT_EMAIL_FROM", "cec-etl@example.org")


def quarantine_140() -> Alert:
    (alert,) = alerts_for_snapshot(meta(), frame(c1_rows()), {"list": ("quarantined", None)},
                                   REPORT, divisions=DIVISIONS)
    return alert


# --- building alerts --------------------------------------------------------------------

def test_quarantined_contest_alert_says_what_where_when_and_where_the_report_is() -> None:
    statuses = {"list": ("quarantined", "C1 failed"), "okrug-1": ("published", None)}
    rows = c1_rows() + passing_rows("okrug-1")
    alerts = alerts_for_snapshot(meta(), frame(rows), statuses, REPORT, divisions=DIVISIONS)

    assert [(a.kind, a.contest_id) for a in alerts] == [("quarantined", "list")]
    alert = alerts[0]
    assert alert.severity == "critical"
    assert alert.checks == ("C1",)
    assert (alert.election_id, alert.snapshot_id) == ("jk2021", "snap-140")
    assert alert.portal_updated_at == PORTAL_TIME
    assert alert.report_path == REPORT
    assert alert.title == "QUARANTINED list: C1 published percentages sum to 143.27%"
    for words in ("jk2021", "list", "Кыргызская Республика", "C1", "143.27", "<= 100.00",
                  PORTAL_TIME, REPORT, "quarantined, not published"):
        assert words in alert.message
    # The summary row is not a failing instance: only the root division is listed.
    assert alert.details == (
        "C1 at Кыргызская Республика (0): published percentages sum to 143.27% "
        "(observed 143.27, expected <= 100.00)",
    )


def test_warnings_are_grouped_per_contest_and_passing_contests_stay_quiet() -> None:
    rows = [*w2_rows(), *passing_rows("list"),
            dq_row("W1", "okrug-7", "okrug-7-12", "980", "1000",
                   "children sum to 980, parent says 1000")]
    statuses = {"list": ("published", None), "okrug-7": ("published", None)}
    alerts = alerts_for_snapshot(meta(), frame(rows), statuses, REPORT, divisions=DIVISIONS)

    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.kind, alert.severity, alert.contest_id) == ("warning", "warning", "okrug-7")
    assert alert.checks == ("W1", "W2")
    assert "published with warnings" in alert.message
    assert "W1 (1 row), W2 (1 row)" in alert.message
    assert any("УИК №1012" in d and "line №3" in d and "4180" in d and ">= 4310" in d
               for d in alert.details)


def test_a_check_failing_only_in_its_summary_row_is_still_described() -> None:
    rows = [dq_row("W3", "okrug-7", None, "2 pages missing", "0 pages missing",
                   "2 division pages could not be fetched")]
    (alert,) = alerts_for_snapshot(meta(), frame(rows), {"okrug-7": ("published", None)}, REPORT)
    assert alert.checks == ("W3",)
    assert alert.details == ("W3 at contest okrug-7: 2 division pages could not be fetched "
                             "(observed 2 pages missing, expected 0 pages missing)",)


def test_quarantined_contest_with_warnings_gets_both_alerts() -> None:
    rows = c1_rows() + w2_rows("list")
    alerts = alerts_for_snapshot(meta(), frame(rows), {"list": ("quarantined", None)}, REPORT)
    assert [(a.kind, a.checks) for a in alerts] == [("quarantined", ("C1",)), ("warning", ("W2",))]


def test_long_failure_lists_are_cut_with_a_count_of_the_rest() -> None:
    rows = [dq_row("C4", "list", f"d{i}", "3.50", "3.48", f"line 1 shows 3.50% at d{i}")
            for i in range(30)]
    (alert,) = alerts_for_snapshot(meta(), frame(rows), {"list": ("quarantined", None)}, REPORT)
    assert len(alert.details) == 21
    assert alert.details[-1] == "… and 10 more"
    assert "C4 (30 rows)" in alert.message


def test_failed_contest_is_a_pipeline_alert_listing_its_failed_pages() -> None:
    snapshot = meta() | {"failures": [
        {"url": "http://portal/ru/results/jk2021/okrug-3/", "reason": "timed out",
         "status": None, "contest_id": "okrug-3"},
        {"url": "http://portal/ru/results/jk2021/list/", "reason": "HTTP 503",
         "status": 503, "contest_id": "list"},
    ]}
    alerts = alerts_for_snapshot(snapshot, frame([]), {"okrug-3": ("failed", None)}, None)
    assert [(a.kind, a.severity, a.contest_id) for a in alerts] == [
        ("pipeline_failed", "critical", "okrug-3")]
    assert alerts[0].details == ("http://portal/ru/results/jk2021/okrug-3/: timed out",)
    assert "could not be processed" in alerts[0].message


def test_unknown_contest_status_is_refused() -> None:
    with pytest.raises(ValueError, match="okrug-1"):
        alerts_for_snapshot(meta(), frame([]), {"okrug-1": ("done", None)}, None)


def test_pipeline_failure_alert_waits_for_the_configured_number_of_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CEC_ALERT_AFTER_FAILED_RUNS", "3")
    reason = "portal withdrew the results: maintenance page without a results table"
    assert alerts_for_pipeline_failure("jk2021", reason, 2) == []
    (alert,) = alerts_for_pipeline_failure("jk2021", reason, 3)
    assert (alert.kind, alert.severity, alert.contest_id) == ("pipeline_failed", "critical", None)
    assert reason in alert.title
    assert "3 runs in a row" in alert.message
    assert "http://127.0.0.1:8765" in alert.message  # where to look: the configured portal


# --- channels, each against a real receiver ---------------------------------------------

def test_jsonl_channel_appends_one_object_per_alert(alert_env: Path) -> None:
    path = alert_env / "alerts.jsonl"
    channel = JsonLinesChannel(path)
    alert = quarantine_140()
    channel.send(alert)
    channel.send(alert)

    records = jsonl(path)
    assert len(records) == 2
    record = records[0]
    assert {k: record[k] for k in ("kind", "severity", "election_id", "contest_id", "checks",
                                   "snapshot_id", "portal_updated_at", "report_path")} == {
        "kind": "quarantined", "severity": "critical", "election_id": "jk2021",
        "contest_id": "list", "checks": ["C1"], "snapshot_id": "snap-140",
        "portal_updated_at": PORTAL_TIME, "report_path": REPORT,
    }
    assert "143.27" in record["message"]
    assert record["details"] == list(alert.details)
    assert record["dedupe_key"] == alert.dedupe_key
    assert record["sent_at"].endswith("+00:00")


def test_webhook_channel_posts_the_alert_as_json(webhook: HttpReceiver) -> None:
    WebhookChannel(f"{webhook.url}/hooks/cec").send(quarantine_140())

    (post,) = webhook.posts()
    assert post.path == "/hooks/cec"
    assert post.headers["Content-Type"] == "application/json"
    body = post.json()
    assert (body["kind"], body["contest_id"], body["checks"]) == ("quarantined", "list", ["C1"])
    assert body["portal_updated_at"] == PORTAL_TIME
    assert body["report_path"] == REPORT
    assert "observed 143.27, expected <= 100.00" in body["details"][0]


@pytest.mark.parametrize("form", ["host_and_token", "full_url_in_password"])
def test_slack_channel_posts_through_the_provider_notifier(
    slack: HttpReceiver, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    if form == "host_and_token":
        conn_id = slack_connection(monkeypatch, slack)
    else:
        conn_id = "cec_slack_url"
        monkeypatch.setenv("AIRFLOW_CONN_CEC_SLACK_URL", json.dumps({
            "conn_type": "slackwebhook", "password": f"{slack.url}{SLACK_TOKEN_PATH}"}))
    SlackChannel(conn_id).send(quarantine_140())

    (post,) = slack.posts()
    assert post.path == SLACK_TOKEN_PATH
    text = post.json()["text"]
    assert text.startswith(":rotating_light: *QUARANTINED list: C1 published percentages")
    for words in ("contest `list`", "checks C1", "observed 143.27", "expected &lt;= 100.00",
                  f"portal updated {PORTAL_TIME}", f"Report: `{REPORT}`"):
        assert words in text


@pytest.mark.parametrize("form", ["json", "uri"])
def test_email_channel_mails_through_the_provider_notifier(
    smtp: SmtpReceiver, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    if form == "json":
        conn_id = smtp_connection(monkeypatch, smtp)
    else:
        conn_id = "cec_smtp_uri"
        monkeypatch.setenv(
            "AIRFLOW_CONN_CEC_SMTP_URI",
            f"smtp://127.0.0.1:{smtp.port}?disable_tls=true&disable_ssl=true&retry_limit=0",
        )
    EmailChannel(conn_id, ("oncall@example.org",), "cec-etl@example.org").send(quarantine_140())

    (message,) = smtp.messages
    assert message["Subject"] == (
        "[CEC jk2021] QUARANTINED list: C1 published percentages sum to 143.27%")
    assert message["From"] == "cec-etl@example.org"
    assert smtp.envelopes == [("cec-etl@example.org", ["oncall@example.org"])]
    body = mail_body(message)
    for words in ("contest list", "C1 at Кыргызская Республика (0)", "observed 143.27",
                  "expected <= 100.00", f"Portal updated: {PORTAL_TIME}", f"Report:         {REPORT}"):
        assert words in body


def test_configured_channels_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, alert_env: Path
) -> None:
    (only,) = configured_channels()
    assert isinstance(only, JsonLinesChannel) and only.path == alert_env / "alerts.jsonl"

    monkeypatch.setenv("CEC_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("CEC_ALERT_SLACK_CONN_ID", "cec_slack")
    monkeypatch.setenv("CEC_ALERT_SMTP_CONN_ID", "cec_smtp")
    monkeypatch.setenv("CEC_ALERT_TIMEOUT", "3")
    with caplog.at_level(logging.ERROR, logger="etl.alerts"):
        names = [c.name for c in configured_channels()]
    assert names == ["jsonl", "webhook", "slack"]  # email needs recipients
    assert "CEC_ALERT_EMAIL_TO is empty" in caplog.text

    monkeypatch.setenv("CEC_ALERT_EMAIL_TO", "a@example.org,b@example.org")
    channels = configured_channels()
    assert [c.name for c in channels] == ["jsonl", "webhook", "slack", "email"]
    email = channels[3]
    assert isinstance(email, EmailChannel) and email.to == ("a@example.org", "b@example.org")
    webhook = channels[1]
    assert isinstance(webhook, WebhookChannel) and (webhook.timeout, webhook.retries) == (3.0, 1)


# --- once per problem: deduplication and resolution ---------------------------------------

def test_same_problem_seen_by_three_runs_reaches_every_receiver_once(
    providers: None, monkeypatch: pytest.MonkeyPatch, alert_env: Path,
    webhook: HttpReceiver, slack: HttpReceiver, smtp: SmtpReceiver,
) -> None:
    configure_all(monkeypatch, webhook, slack, smtp)
    results = [
        alert_on_snapshot(meta(), frame(c1_rows()), {"list": ("quarantined", None)}, REPORT)
        for _ in range(3)
    ]

    assert [len(r.sent) for r in results] == [1, 0, 0]
    assert [len(r.suppressed) for r in results] == [0, 1, 1]
    assert not any(r.failures for r in results)
    assert len(jsonl(alert_env / "alerts.jsonl")) == 1
    assert len(webhook.posts()) == 1
    assert len(slack.posts()) == 1
    assert len(smtp.messages) == 1
    assert smtp.envelopes[0][1] == ["oncall@example.org", "data-team@example.org"]


def test_a_new_snapshot_alerts_again_only_when_the_failed_checks_change(alert_env: Path) -> None:
    log = alert_env / "alerts.jsonl"
    channels = [JsonLinesChannel(log)]
    statuses = {"list": ("quarantined", None)}
    alert_on_snapshot(meta("snap-140"), frame(c1_rows()), statuses, REPORT, channels=channels)
    # Five minutes later the portal still shows 150%: the open problem is not repeated.
    later = alert_on_snapshot(meta("snap-150", "2021-11-28T22:20:00+06:00"), frame(c1_rows()),
                              statuses, REPORT, channels=channels)
    assert later.sent == ()
    # Then the formula breaks differently: a new set of failed checks is a new problem.
    rows = [*c1_rows(), dq_row("C4", "list", "0", "71.60", "35.80", "line 5 is doubled")]
    changed = alert_on_snapshot(meta("snap-160", "2021-11-28T22:25:00+06:00"), frame(rows),
                                statuses, REPORT, channels=channels)
    assert [(a.kind, a.checks) for a in changed.sent] == [("quarantined", ("C1", "C4"))]
    assert [r["kind"] for r in jsonl(log)] == ["quarantined", "quarantined"]  # no "resolved"


def test_a_problem_that_passes_again_resolves_once_and_only_inside_the_scope(
    alert_env: Path,
) -> None:
    log = alert_env / "alerts.jsonl"
    channels = [JsonLinesChannel(log)]
    first = alert_on_snapshot(
        meta("snap-140"), frame(c1_rows() + w2_rows()),
        {"list": ("quarantined", None), "okrug-7": ("published", None)}, REPORT, channels=channels)
    assert {(a.kind, a.contest_id) for a in first.sent} == {("quarantined", "list"), ("warning", "okrug-7")}

    # The next run evaluated only the party list, and it passes now (86.96% is correct).
    fixed = meta("snap-8696", "2021-11-28T23:40:00+06:00")
    for _ in range(2):
        alert_on_snapshot(fixed, frame(passing_rows("list")), {"list": ("published", None)},
                          "data/reports/jk2021/snap-8696.html", channels=channels)
    resolved = [r for r in jsonl(log) if r["kind"] == "resolved"]
    assert len(resolved) == 1
    (record,) = resolved
    assert (record["severity"], record["contest_id"], record["checks"]) == ("info", "list", ["C1"])
    assert record["snapshot_id"] == "snap-8696"
    assert "QUARANTINED list: C1" in record["message"]  # which alert it closes
    # okrug-7 was not evaluated: its warning stays open, no resolution for it.
    assert set(AlertBook(alert_env / "alert_state.json").open_problems()) == {"jk2021|okrug-7|warning"}

    alert_on_snapshot(meta("snap-9000", "2021-11-29T02:00:00+06:00"), frame(passing_rows("okrug-7")),
                      {"okrug-7": ("published", None)}, None, channels=channels)
    assert [(r["kind"], r["contest_id"]) for r in jsonl(log)][-1] == ("resolved", "okrug-7")
    assert AlertBook(alert_env / "alert_state.json").open_problems() == {}


def test_a_broken_channel_is_logged_and_does_not_stop_the_others(
    providers: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    alert_env: Path, webhook: HttpReceiver, smtp: SmtpReceiver,
) -> None:
    webhook.status = 500
    # Slack points at a port nothing listens on: connection refused.
    monkeypatch.setenv("AIRFLOW_CONN_CEC_SLACK_DEAD", json.dumps({
        "conn_type": "slackwebhook", "host": f"http://127.0.0.1:{free_port()}", "password": "T/B/X"}))
    monkeypatch.setenv("CEC_ALERT_WEBHOOK_URL", f"{webhook.url}/hooks/secret-token")
    monkeypatch.setenv("CEC_ALERT_SLACK_CONN_ID", "cec_slack_dead")
    monkeypatch.setenv("CEC_ALERT_SMTP_CONN_ID", smtp_connection(monkeypatch, smtp))
    monkeypatch.setenv("CEC_ALERT_EMAIL_TO", "oncall@example.org")
    monkeypatch.setenv("CEC_ALERT_EMAIL_FROM", "cec-etl@example.org")

    with caplog.at_level(logging.INFO, logger="etl.alerts"):
        result = alert_on_snapshot(meta(), frame(c1_rows()), {"list": ("quarantined", None)}, REPORT)

    assert len(jsonl(alert_env / "alerts.jsonl")) == 1
    assert len(smtp.messages) == 1
    assert len(webhook.posts()) == 2  # one retry (CEC_ALERT_RETRIES=1), then given up
    assert {f.channel for f in result.failures} == {"webhook", "slack"}
    reasons = {f.channel: f.reason for f in result.failures}
    assert "HTTP 500" in reasons["webhook"]
    assert "secret-token" not in reasons["webhook"]
    assert "Connection refused" in reasons["slack"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("NOT delivered to webhook" in e and "HTTP 500" in e for e in errors)
    assert any("NOT delivered to slack" in e and "Connection refused" in e for e in errors)
    # Still recorded as sent: the next run does not hammer the working channels again.
    again = alert_on_snapshot(meta(), frame(c1_rows()), {"list": ("quarantined", None)}, REPORT)
    assert again.sent == () and len(smtp.messages) == 1


def test_pipeline_failure_alerts_after_n_runs_once_per_streak(
    monkeypatch: pytest.MonkeyPatch, alert_env: Path,
) -> None:
    monkeypatch.setenv("CEC_ALERT_AFTER_FAILED_RUNS", "2")
    log = alert_env / "alerts.jsonl"
    channels = [JsonLinesChannel(log)]
    reason = "portal unreachable: 503 Service Unavailable on /ru/results/jk2021/"

    sent = [len(alert_on_failed_run("jk2021", reason, channels=channels).sent) for _ in range(4)]
    assert sent == [0, 1, 0, 0]
    (failed,) = jsonl(log)
    assert (failed["kind"], failed["contest_id"]) == ("pipeline_failed", None)
    assert "2 runs in a row" in failed["message"] and reason in failed["message"]

    # A good run ends the streak and says so once.
    ok = alert_on_snapshot(meta(), frame(passing_rows("list")), {"list": ("published", None)},
                           None, channels=channels)
    assert [(a.kind, a.contest_id) for a in ok.sent] == [("resolved", None)]
    # A new streak counts from zero and alerts again at its second failure.
    sent = [len(alert_on_failed_run("jk2021", reason, channels=channels).sent) for _ in range(3)]
    assert sent == [0, 1, 0]
    assert [r["kind"] for r in jsonl(log)] == ["pipeline_failed", "resolved", "pipeline_failed"]


def test_an_unchanged_portal_ends_a_failure_streak(
    monkeypatch: pytest.MonkeyPatch, alert_env: Path,
) -> None:
    monkeypatch.setenv("CEC_ALERT_AFTER_FAILED_RUNS", "2")
    channels = [JsonLinesChannel(alert_env / "alerts.jsonl")]
    alert_on_failed_run("jk2021", "timed out", channels=channels)
    alert_on_unchanged_portal("jk2021", channels=channels)
    assert alert_on_failed_run("jk2021", "timed out", channels=channels).sent == ()
    assert AlertBook(alert_env / "alert_state.json").record_run_outcome("jk2021", ok=False) == 2


def test_dispatch_resolves_nothing_outside_its_election(alert_env: Path) -> None:
    channels = [JsonLinesChannel(alert_env / "alerts.jsonl")]
    dispatch([quarantine_140()], Scope("jk2021", frozenset({"list"})), channels)
    other = dispatch([], Scope("kg2020", frozenset({"list"}), run_ok=True), channels)
    assert other.sent == ()
    assert list(AlertBook(alert_env / "alert_state.json").open_problems()) == ["jk2021|list|quarantined"]


def test_a_corrupt_state_file_stops_alerting_with_a_clear_error(alert_env: Path) -> None:
    state = alert_env / "alert_state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    with pytest.raises(RuntimeError, match="move it aside"):
        dispatch([quarantine_140()], Scope("jk2021"), [JsonLinesChannel(alert_env / "a.jsonl")])


CHILD = """
import sys, time
from pathlib import Path
from etl.alerts import Alert, AlertBook, JsonLinesChannel, Scope

class SlowChannel:
    name = "slow"
    def send(self, alert):
        time.sleep(0.01)  # a real send takes a while: widens any race

def problem(contest):
    return Alert("quarantined", "critical", "jk2021", contest, ("C1",), "s1", None,
                 f"QUARANTINED {contest}", "m")

state, log, who, start = sys.argv[1:]
book = AlertBook(state)
channels = [JsonLinesChannel(Path(log)), SlowChannel()]
while time.time() < float(start):
    time.sleep(0.001)
for i in range(10):
    book.dispatch([problem(f"{who}-{i}"), problem("shared")], Scope("jk2021"), channels)
    book.record_run_outcome("jk2021", ok=False)
"""


def test_concurrent_dispatch_from_two_processes_loses_and_duplicates_nothing(
    alert_env: Path,
) -> None:
    state, log = alert_env / "alert_state.json", alert_env / "alerts.jsonl"
    start = str(time.time() + 1.5)  # both children start together, after importing
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(state), str(log), who, start], env=env)
        for who in ("a", "b")
    ]
    assert [child.wait(timeout=60) for child in children] == [0, 0]

    contests = [r["contest_id"] for r in jsonl(log)]
    expected = {f"{who}-{i}" for who in "ab" for i in range(10)} | {"shared"}
    assert sorted(contests) == sorted(expected)  # each exactly once
    book = AlertBook(state)
    assert {key.split("|")[1] for key in book.open_problems()} == expected
    assert book.record_run_outcome("jk2021", ok=False) == 21
