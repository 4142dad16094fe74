"""Alerts: build them from a snapshot's quality results or a failed run, send each once.

See `etl/alerts/README.md` for the rules (deduplication, resolution) and the settings.
"""

from __future__ import annotations

from etl.alerts.book import (
    AlertBook,
    AlertLogError,
    DeliveryFailure,
    DispatchResult,
    Scope,
    alert_on_failed_run,
    alert_on_snapshot,
    alert_on_unchanged_portal,
    dispatch,
    record_run_outcome,
)
from etl.alerts.build import alerts_for_pipeline_failure, alerts_for_snapshot
from etl.alerts.channels import (
    AlertDeliveryError,
    Channel,
    EmailChannel,
    JsonLinesChannel,
    SlackChannel,
    WebhookChannel,
    configured_channels,
)
from etl.alerts.model import Alert, AlertKind, Severity

__all__ = [
    "Alert",
    "AlertBook",
    "AlertDeliveryError",
    "AlertKind",
    "AlertLogError",
    "Channel",
    "DeliveryFailure",
    "DispatchResult",
    "EmailChannel",
    "JsonLinesChannel",
    "Scope",
    "Severity",
    "SlackChannel",
    "WebhookChannel",
    "alert_on_failed_run",
    "alert_on_snapshot",
    "alert_on_unchanged_portal",
    "alerts_for_pipeline_failure",
    "alerts_for_snapshot",
    "configured_channels",
    "dispatch",
    "record_run_outcome",
]
