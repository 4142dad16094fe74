"""The data-quality gate: Great Expectations suites over a snapshot's normalised frames.

Public API: `validate_snapshot` (a scrape output directory), `run_checks` (frames, for the
warehouse), `write_report`, and the check catalog `CHECKS`. See README.md for the checks.
"""

from __future__ import annotations

from etl.normalise import SnapshotDirError
from etl.quality.catalog import CHECKS, Check, QualityConfig
from etl.quality.gate import (
    ValidationOutcome,
    critical_contests,
    run_checks,
    validate_snapshot,
)
from etl.quality.report import write_report

__all__ = [
    "CHECKS",
    "Check",
    "QualityConfig",
    "SnapshotDirError",
    "ValidationOutcome",
    "critical_contests",
    "run_checks",
    "validate_snapshot",
    "write_report",
]
