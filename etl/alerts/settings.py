"""Alert settings from the environment, read when asked (never at import time).

Every variable is documented, with its default, in `etl/alerts/README.md`.
"""

from __future__ import annotations

from pathlib import Path

from etl.config import data_dir, env


def alert_state_file() -> Path:
    """Open problems and run streaks (`CEC_ALERT_STATE_FILE`, default `<data>/alert_state.json`)."""
    return Path(env("CEC_ALERT_STATE_FILE", str(data_dir() / "alert_state.json")))


def alert_after_failed_runs() -> int:
    """Failed runs in a row before a pipeline alert (`CEC_ALERT_AFTER_FAILED_RUNS`, default 1)."""
    runs = int(env("CEC_ALERT_AFTER_FAILED_RUNS", "1"))
    if runs < 1:
        raise ValueError(f"CEC_ALERT_AFTER_FAILED_RUNS must be 1 or more, got {runs}")
    return runs


def alert_after_channel_failed_runs() -> int:
    """Failed runs in a row of one channel before the others are told (`CEC_ALERT_CHANNEL_FAILED_RUNS`, 3)."""
    runs = int(env("CEC_ALERT_CHANNEL_FAILED_RUNS", "3"))
    if runs < 1:
        raise ValueError(f"CEC_ALERT_CHANNEL_FAILED_RUNS must be 1 or more, got {runs}")
    return runs


def webhook_url() -> str | None:
    """Generic JSON webhook (`CEC_ALERT_WEBHOOK_URL`, default: off)."""
    return env("CEC_ALERT_WEBHOOK_URL", "") or None


def slack_conn_id() -> str | None:
    """Airflow `slackwebhook` connection id (`CEC_ALERT_SLACK_CONN_ID`, default: off)."""
    return env("CEC_ALERT_SLACK_CONN_ID", "") or None


def smtp_conn_id() -> str | None:
    """Airflow `smtp` connection id (`CEC_ALERT_SMTP_CONN_ID`, default: off)."""
    return env("CEC_ALERT_SMTP_CONN_ID", "") or None


def email_recipients() -> tuple[str, ...]:
    """Comma-separated recipients of alert mail (`CEC_ALERT_EMAIL_TO`, default: none)."""
    return tuple(a.strip() for a in env("CEC_ALERT_EMAIL_TO", "").split(",") if a.strip())


def email_sender() -> str | None:
    """Sender of alert mail (`CEC_ALERT_EMAIL_FROM`, default: the connection's `from_email`)."""
    return env("CEC_ALERT_EMAIL_FROM", "") or None


def delivery_timeout() -> float:
    """Seconds per webhook or Slack attempt (`CEC_ALERT_TIMEOUT`, default 10)."""
    return float(env("CEC_ALERT_TIMEOUT", "10"))


def delivery_retries() -> int:
    """Retries per webhook or Slack alert on errors and 5xx (`CEC_ALERT_RETRIES`, default 2)."""
    return int(env("CEC_ALERT_RETRIES", "2"))
