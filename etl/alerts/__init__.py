"""Alerts: build them from a snapshot's quality results or a failed run, send each once.

See `etl/alerts/README.md` for the rules (deduplication, resolution) and the settings.
"""

from __future__ import annotations

from etl.alerts.build import alerts_for_pipeline_failure, alerts_for_snapshot
from etl.alerts.model import Alert, AlertKind, Severity

__all__ = [
    "Alert",
    "AlertKind",
    "Severity",
    "alerts_for_pipeline_failure",
    "alerts_for_snapshot",
]
