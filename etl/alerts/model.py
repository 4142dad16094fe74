"""The alert record every channel sends and the state book remembers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

AlertKind = Literal["quarantined", "warning", "pipeline_failed", "resolved"]
Severity = Literal["critical", "warning", "info"]

SEVERITY_OF: dict[AlertKind, Severity] = {
    "quarantined": "critical",
    "warning": "warning",
    "pipeline_failed": "critical",
    "resolved": "info",
}

# Chat and mail readers stop reading long lists; the full list is in the report.
MAX_DETAIL_LINES = 20


@dataclass(frozen=True)
class Alert:
    """One thing a person on call should know about one election (and contest)."""

    kind: AlertKind
    severity: Severity
    election_id: str
    contest_id: str | None
    checks: tuple[str, ...]
    snapshot_id: str | None
    portal_updated_at: str | None
    title: str
    message: str
    details: tuple[str, ...] = ()
    report_path: str | None = None

    @property
    def problem_key(self) -> str:
        """The slot a problem occupies while open: election, contest and kind."""
        return f"{self.election_id}|{self.contest_id or '-'}|{self.kind}"

    @property
    def dedupe_key(self) -> str:
        """Same key, same alert: sent once while its problem stays open.

        A problem is its slot plus the failed checks, whatever the snapshot; a `resolved`
        alert is a one-off, so it also carries the snapshot that resolved it.
        """
        key = f"{self.problem_key}|{','.join(self.checks)}"
        return f"{key}|{self.snapshot_id or '-'}" if self.kind == "resolved" else key

    def to_record(self, sent_at: datetime) -> dict[str, object]:
        """The JSON object the alert log and the webhook carry."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "election_id": self.election_id,
            "contest_id": self.contest_id,
            "checks": list(self.checks),
            "snapshot_id": self.snapshot_id,
            "portal_updated_at": self.portal_updated_at,
            "title": self.title,
            "message": self.message,
            "details": list(self.details),
            "report_path": self.report_path,
            "dedupe_key": self.dedupe_key,
            "sent_at": sent_at.isoformat(timespec="seconds"),
        }


def alert_from_record(record: dict[str, object]) -> Alert:
    """The alert an `Alert.to_record` object describes (undelivered alerts are kept so)."""
    return Alert(
        kind=record["kind"],  # type: ignore[arg-type]
        severity=record["severity"],  # type: ignore[arg-type]
        election_id=str(record["election_id"]),
        contest_id=None if record.get("contest_id") is None else str(record["contest_id"]),
        checks=tuple(str(c) for c in record.get("checks") or ()),  # type: ignore[attr-defined]
        snapshot_id=None if record.get("snapshot_id") is None else str(record["snapshot_id"]),
        portal_updated_at=(None if record.get("portal_updated_at") is None
                           else str(record["portal_updated_at"])),
        title=str(record["title"]),
        message=str(record["message"]),
        details=tuple(str(d) for d in record.get("details") or ()),  # type: ignore[attr-defined]
        report_path=None if record.get("report_path") is None else str(record["report_path"]),
    )


def capped(lines: list[str], limit: int = MAX_DETAIL_LINES) -> tuple[str, ...]:
    """At most `limit` lines, then one line saying how many were left out."""
    if len(lines) <= limit:
        return tuple(lines)
    return (*lines[:limit], f"… and {len(lines) - limit} more")
