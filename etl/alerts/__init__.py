"""Alerts: build them from a snapshot's quality results or a failed run, send each once.

See `etl/alerts/README.md` for the rules (deduplication, resolution) and the settings.
"""

from __future__ import annotations

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
    "AlertDeliveryError",
    "AlertKind",
    "Channel",
    "EmailChannel",
    "JsonLinesChannel",
    "Severity",
    "SlackChannel",
    "WebhookChannel",
    "alerts_for_pipeline_failure",
    "alerts_for_snapshot",
    "configured_channels",
]
