"""Turn a snapshot's quality results, or a failed run, into alerts a person can act on."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from etl.alerts.model import SEVERITY_OF, Alert, AlertKind, capped
from etl.alerts.settings import alert_after_failed_runs
from etl.config import portal_url

logger = logging.getLogger(__name__)

CONTEST_STATUSES = ("published", "quarantined", "failed")
_HEADLINE_WORD: dict[AlertKind, str] = {"quarantined": "QUARANTINED", "warning": "WARNING"}


@dataclass(frozen=True)
class _Evaluation:
    """What every alert of one snapshot repeats: where, when and where the report is."""

    election_id: str
    snapshot_id: str
    portal_updated_at: str | None
    report_path: str | None
    division_names: Mapping[tuple[str, str], str]

    @property
    def where_reported(self) -> str:
        return f"Full report: {self.report_path}." if self.report_path else "No report was written."


def alerts_for_snapshot(
    snapshot_meta: Mapping[str, Any],
    dq_results: pd.DataFrame,
    contest_statuses: Mapping[str, tuple[str, str | None]],
    report_path: str | None,
    *,
    divisions: pd.DataFrame | None = None,
) -> list[Alert]:
    """Alerts for one evaluated snapshot: per contest, quarantine, warnings or failure.

    `divisions` (the snapshot's divisions frame) lets messages name divisions, not only ids.
    """
    failing = dq_results[~dq_results["success"].astype(bool)]
    evaluation = _Evaluation(
        election_id=str(snapshot_meta["election_id"]),
        snapshot_id=str(snapshot_meta["snapshot_id"]),
        portal_updated_at=iso_time(snapshot_meta.get("portal_updated_at")),
        report_path=report_path,
        division_names=_division_names(divisions, failing),
    )
    # Each contest's failing rows, in their order (a clean snapshot has none: ~0.1 s of
    # filtering 37 contests three times each, on the critical path of every cycle).
    by_contest = {str(contest): rows for contest, rows in failing.groupby(
        "contest_id", sort=False, observed=True)} if len(failing) else {}
    none = failing.iloc[0:0]
    alerts: list[Alert] = []
    for contest_id in sorted(contest_statuses):
        status, reason = contest_statuses[contest_id]
        if status not in CONTEST_STATUSES:
            raise ValueError(f"contest {contest_id}: status {status!r} is not one of {CONTEST_STATUSES}")
        if status == "failed":
            alerts.append(_contest_failed(evaluation, contest_id, reason, snapshot_meta))
            continue
        rows = by_contest.get(contest_id, none)
        critical, warnings = ((rows[rows["severity"] == "critical"],
                               rows[rows["severity"] == "warning"]) if len(rows) else (rows, rows))
        if status == "quarantined":
            alerts.append(_quality_alert("quarantined", evaluation, contest_id, status, reason, critical))
        if not warnings.empty:
            alerts.append(_quality_alert("warning", evaluation, contest_id, status, reason, warnings))
    logger.info(
        "snapshot %s of %s: %d contests evaluated, %d alerts built",
        evaluation.snapshot_id, evaluation.election_id, len(contest_statuses), len(alerts),
    )
    return alerts


def alerts_for_pipeline_failure(
    election_id: str,
    reason: str,
    consecutive_failures: int,
    *,
    threshold: int | None = None,
    portal_updated_at: str | None = None,
    report_path: str | None = None,
) -> list[Alert]:
    """One `pipeline_failed` alert once `threshold` runs in a row failed, else none.

    `threshold` defaults to `CEC_ALERT_AFTER_FAILED_RUNS`; `portal_updated_at` is the last
    portal time the pipeline saw, when known.
    """
    threshold = alert_after_failed_runs() if threshold is None else threshold
    if consecutive_failures < threshold:
        logger.info(
            "%s: run failed (%d in a row, alert after %d): %s",
            election_id, consecutive_failures, threshold, reason,
        )
        return []
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    headline = lines[0] if lines else "no reason given"
    runs = "1 run" if consecutive_failures == 1 else f"{consecutive_failures} runs in a row"
    last_seen = f" (last portal update seen: {portal_updated_at})" if portal_updated_at else ""
    message = (
        f"Election {election_id}: the pipeline failed {runs}: {headline}.\n"
        "Nothing new is published until a run succeeds; consumers keep the last published "
        f"snapshot{last_seen}.\n"
        f"Check that the portal answers at {portal_url()} and read the failed task's log."
    )
    return [
        Alert(
            kind="pipeline_failed",
            severity=SEVERITY_OF["pipeline_failed"],
            election_id=election_id,
            contest_id=None,
            checks=(),
            snapshot_id=None,
            portal_updated_at=portal_updated_at,
            title=f"PIPELINE FAILED {election_id}: {headline}",
            message=message,
            details=capped(lines[1:]),
            report_path=report_path,
        )
    ]


def resolved_alert(
    problem: Mapping[str, Any],
    *,
    snapshot_id: str | None,
    portal_updated_at: str | None,
    report_path: str | None,
) -> Alert:
    """The `resolved` alert closing an open problem (as the state book stored it)."""
    kind = problem["kind"]
    election_id = problem["election_id"]
    contest_id = problem["contest_id"]
    checks = tuple(problem["checks"])
    if kind == "pipeline_failed" and contest_id is None:
        title = f"RESOLVED {election_id}: the pipeline runs again"
        opening = f"Election {election_id}: a run succeeded again"
    elif kind == "pipeline_failed":
        title = f"RESOLVED {contest_id}: the contest is processed again"
        opening = f"Election {election_id}, contest {contest_id}: the contest was processed again"
    else:
        after = "passes again" if len(checks) == 1 else "pass again"
        title = f"RESOLVED {contest_id}: {', '.join(checks)} {after}"
        opening = f"Election {election_id}, contest {contest_id}: {', '.join(checks)} {after}"
    on_snapshot = f" on snapshot {snapshot_id}" if snapshot_id else ""
    portal = f" (portal updated {portal_updated_at})" if portal_updated_at else ""
    message = (
        f"{opening}{on_snapshot}{portal}.\n"
        f"Closes the alert sent at {problem['sent_at']}: {problem['title']}"
    )
    if report_path:
        message += f"\nFull report: {report_path}."
    return Alert(
        kind="resolved",
        severity=SEVERITY_OF["resolved"],
        election_id=election_id,
        contest_id=contest_id,
        checks=checks,
        snapshot_id=snapshot_id,
        portal_updated_at=portal_updated_at,
        title=title,
        message=message,
        report_path=report_path,
    )


def iso_time(value: object) -> str | None:
    """A portal time as an ISO string (snapshot.json may hold a string or a datetime)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _quality_alert(
    kind: AlertKind,
    evaluation: _Evaluation,
    contest_id: str,
    status: str,
    reason: str | None,
    rows: pd.DataFrame,
) -> Alert:
    """A quarantine or warning alert for one contest from its failing quality rows."""
    checks = tuple(sorted(set(rows["check_id"].astype(str))))
    instances = rows[rows["division_id"].notna()]
    # A check's summary row (division null) speaks for it only when it has no instance rows.
    summaries = rows[rows["division_id"].isna() & ~rows["check_id"].isin(instances["check_id"])]
    shown = pd.concat([instances, summaries]).sort_values("check_id", kind="stable")
    described = [_describe(evaluation, contest_id, row) for row in shown.to_dict("records")]
    counts = ", ".join(
        f"{check} ({n} {'row' if n == 1 else 'rows'})"
        for check, n in Counter(shown["check_id"].astype(str)).items()
    )
    where = f"Election {evaluation.election_id}, contest {contest_id}: snapshot {evaluation.snapshot_id}"
    if evaluation.portal_updated_at:
        where += f" (portal updated {evaluation.portal_updated_at})"
    if kind == "quarantined":
        what = "is quarantined, not published; consumers keep the previous published snapshot."
        failed = f"Failed critical checks: {counts or 'none recorded'}."
    elif status == "quarantined":
        what = "also fails warning checks (it is quarantined: see that alert)."
        failed = f"Failed warning checks: {counts}."
    else:
        what = "was published with warnings; review them before relying on the figures."
        failed = f"Failed warning checks: {counts}."
    lines = [f"{where} {what}", failed]
    if described:
        lines.append(f"First failure: {described[0]}.")
    if reason:
        lines.append(f"Quality gate: {reason}.")
    lines.append(evaluation.where_reported)
    if checks and not shown.empty:
        headline = _headline(shown.iloc[0].to_dict())
        more = len(checks) - 1
        extra = f" (+{more} more check{'s' if more > 1 else ''})" if more else ""
        title = f"{_HEADLINE_WORD[kind]} {contest_id}: {checks[0]} {headline}{extra}"
    else:
        title = f"{_HEADLINE_WORD[kind]} {contest_id}: {reason or 'critical checks failed'}"
    return Alert(
        kind=kind,
        severity=SEVERITY_OF[kind],
        election_id=evaluation.election_id,
        contest_id=contest_id,
        checks=checks,
        snapshot_id=evaluation.snapshot_id,
        portal_updated_at=evaluation.portal_updated_at,
        title=title,
        message="\n".join(lines),
        details=capped(described),
        report_path=evaluation.report_path,
    )


def _contest_failed(
    evaluation: _Evaluation, contest_id: str, reason: str | None, snapshot_meta: Mapping[str, Any]
) -> Alert:
    """A contest the run could not process: the fetch failures say which pages and why."""
    failures = [
        f for f in snapshot_meta.get("failures") or () if f.get("contest_id") == contest_id
    ]
    details = [
        f"{f.get('url')}: {f.get('reason')}" + (f" (HTTP {f['status']})" if f.get("status") else "")
        for f in failures
    ]
    headline = reason or (f"{len(failures)} pages failed" if failures else "the contest failed")
    portal = f" (portal updated {evaluation.portal_updated_at})" if evaluation.portal_updated_at else ""
    message = (
        f"Election {evaluation.election_id}, contest {contest_id}: snapshot {evaluation.snapshot_id}"
        f"{portal} could not be processed: {headline}.\n"
        "Nothing new is published for this contest; consumers keep its last published snapshot.\n"
        f"{evaluation.where_reported}"
    )
    return Alert(
        kind="pipeline_failed",
        severity=SEVERITY_OF["pipeline_failed"],
        election_id=evaluation.election_id,
        contest_id=contest_id,
        checks=(),
        snapshot_id=evaluation.snapshot_id,
        portal_updated_at=evaluation.portal_updated_at,
        title=f"PIPELINE FAILED {contest_id}: {headline}",
        message=message,
        details=capped(details),
        report_path=evaluation.report_path,
    )


def _division_names(divisions: pd.DataFrame | None,
                    failing: pd.DataFrame) -> dict[tuple[str, str], str]:
    """The names of the divisions that failing rows name (only those are described)."""
    if divisions is None or divisions.empty or failing["division_id"].isna().all():
        return {}
    key = ["contest_id", "division_id"]
    named = divisions.dropna(subset=[*key, "name"])
    named = named.assign(**{c: named[c].astype("string") for c in key}).merge(
        failing[key].dropna().astype("string").drop_duplicates(), on=key)
    return {
        (str(c), str(d)): str(n)
        for c, d, n in zip(named["contest_id"], named["division_id"], named["name"], strict=True)
    }


def _text(value: object) -> str | None:
    if value is None or pd.isna(value):
        return None
    return str(value)


def _headline(row: Mapping[str, Any]) -> str:
    """The row's own message, or its observed value against the expected one."""
    message = _text(row.get("message"))
    if message:
        return message
    return f"observed {_text(row.get('observed')) or '—'}, expected {_text(row.get('expected')) or '—'}"


def _describe(evaluation: _Evaluation, contest_id: str, row: Mapping[str, Any]) -> str:
    """One failing row in words: check, division (by name), ballot line, observed/expected."""
    division_id = _text(row.get("division_id"))
    if division_id is None:
        where = f"contest {contest_id}"
    else:
        name = evaluation.division_names.get((contest_id, division_id))
        where = f"{name} ({division_id})" if name else f"division {division_id}"
    position = _text(row.get("choice_position"))
    line = f", line №{position}" if position else ""
    observed = _text(row.get("observed")) or "—"
    expected = _text(row.get("expected")) or "—"
    message = _text(row.get("message"))
    said = f"{message} " if message else ""
    return f"{row['check_id']} at {where}{line}: {said}(observed {observed}, expected {expected})"
