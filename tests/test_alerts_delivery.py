"""Alert delivery is never silent: undelivered alerts are retried, a channel that keeps
failing is reported on the others, a failed alert log fails the run, and what a channel
renders is escaped (issue 10, items 7 and 9)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from receivers import HttpReceiver

from etl.alerts import (
    AlertBook,
    AlertLogError,
    alert_on_failed_run,
    alert_on_snapshot,
    alerts_for_snapshot,
)
from etl.alerts.channels import email_html, slack_text
from etl.schema import DQ_RESULTS, typed_frame

PORTAL_TIME = "2021-11-28T22:15:00+06:00"


def c1_rows(contest_id: str) -> pd.DataFrame:
    rows = [
        {"snapshot_id": "snap-140", "check_id": "C1", "severity": "critical", "success": False,
         "contest_id": contest_id, "division_id": division, "choice_position": None,
         "observed": observed, "expected": expected, "message": message}
        for division, observed, expected, message in (
            (None, "1", "0", "1 of 8 divisions over 100%"),
            ("0", "143.27", "<= 100.00", "published percentages sum to 143.27%"),
        )
    ]
    return typed_frame(rows, DQ_RESULTS)


def meta() -> dict[str, Any]:
    return {"snapshot_id": "snap-140", "election_id": "jk2021",
            "portal_updated_at": PORTAL_TIME, "failures": []}


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CEC_ALERTS_FILE", "CEC_ALERT_STATE_FILE", "CEC_ALERT_SLACK_CONN_ID",
                 "CEC_ALERT_SMTP_CONN_ID", "CEC_ALERT_EMAIL_TO", "CEC_ALERT_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CEC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CEC_ALERT_RETRIES", "0")
    monkeypatch.setenv("CEC_ALERT_TIMEOUT", "5")
    return tmp_path / "data"


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        monkeypatch.setenv("CEC_ALERT_WEBHOOK_URL", f"{receiver.url}/hooks/cec")
        yield receiver


def quarantine(contest_id: str = "list") -> Any:
    return alert_on_snapshot(meta(), c1_rows(contest_id), {contest_id: ("quarantined", None)},
                             "report.html")


def test_an_undelivered_alert_is_retried_next_run_and_delivered_once(
    data: Path, webhook: HttpReceiver
) -> None:
    webhook.status = 503
    first = quarantine()
    assert [f.channel for f in first.failures] == ["webhook"]
    assert len(AlertBook().undelivered()["webhook"]) == 1

    webhook.status = 200
    again = quarantine()  # the same problem: not a new alert, but the queued one goes out
    assert again.sent == () and again.failures == ()
    delivered = [p.json() for p in webhook.posts() if p.json()["kind"] == "quarantined"]
    assert len(webhook.posts()) == 2 and delivered[-1]["contest_id"] == "list"
    assert AlertBook().undelivered() == {}
    # The log got it once, on the first run; nothing is delivered twice afterwards.
    assert [r["kind"] for r in jsonl(data / "alerts.jsonl")] == ["quarantined"]
    quarantine()
    assert len(webhook.posts()) == 2


def test_queued_alerts_keep_their_order_while_a_channel_is_down(
    data: Path, webhook: HttpReceiver
) -> None:
    webhook.status = 500
    quarantine("list")
    quarantine("okrug-7")  # the channel failed on its queue: the new alert queues behind
    assert [r["contest_id"] for r in AlertBook().undelivered()["webhook"]] == ["list", "okrug-7"]
    webhook.status = 200
    alert_on_failed_run("jk2021", "portal timed out")
    # Run 1 tried `list`; run 2 retried it, failed, and queued `okrug-7` without trying it
    # on the dead channel; run 3 delivered the queue in order, then its own alert.
    assert [p.json()["contest_id"] for p in webhook.posts()] == [
        "list", "list", "list", "okrug-7", None]
    assert AlertBook().undelivered() == {}


def test_a_channel_failing_n_runs_in_a_row_is_reported_once_on_the_others(
    data: Path, webhook: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CEC_ALERT_CHANNEL_FAILED_RUNS", "2")
    webhook.status = 500
    quarantine("list")
    assert not [r for r in jsonl(data / "alerts.jsonl") if "CHANNEL DOWN" in r["title"]]
    quarantine("okrug-7")
    quarantine("okrug-8")
    down = [r for r in jsonl(data / "alerts.jsonl") if "CHANNEL DOWN" in r["title"]]
    assert len(down) == 1
    assert down[0]["title"] == "ALERT CHANNEL DOWN webhook: 2 runs in a row without delivering"
    assert "2 alert(s) wait for it" in down[0]["message"]
    # Recovery ends the streak: a new outage is reported again after 2 runs.
    webhook.status = 200
    quarantine("okrug-9")
    assert AlertBook().undelivered() == {}
    webhook.status = 500
    quarantine("okrug-10")
    quarantine("okrug-11")
    down = [r for r in jsonl(data / "alerts.jsonl") if "CHANNEL DOWN" in r["title"]]
    assert len(down) == 2


def test_a_failed_write_of_the_alert_log_fails_the_run_and_is_retried(
    data: Path, webhook: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = data / "alerts.jsonl"
    log.mkdir(parents=True)  # a directory where the file should be: every write fails
    with pytest.raises(AlertLogError, match="JSON-lines alert log could not be written"):
        quarantine()
    # The other channels were told, and the decision is kept (not re-sent to them).
    assert len(webhook.posts()) == 1
    log.rmdir()
    result = quarantine()
    assert result.failures == () and len(webhook.posts()) == 1
    assert [r["contest_id"] for r in jsonl(log)] == ["list"]


def test_slack_and_email_escape_what_the_portal_controls() -> None:
    hostile = "<!channel>&<http://evil.example|click>"
    (alert,) = alerts_for_snapshot(
        {"snapshot_id": "snap-1", "election_id": "jk2021", "portal_updated_at": PORTAL_TIME,
         "failures": []},
        c1_rows(hostile), {hostile: ("quarantined", None)}, None)
    text = slack_text(alert)
    assert "<!channel>" not in text and "<http://evil.example" not in text
    assert "contest `&lt;!channel&gt;&amp;&lt;http://evil.example|click&gt;`" in text
    assert "<!channel>" not in email_html(alert)
    assert "&lt;!channel&gt;" in email_html(alert)
