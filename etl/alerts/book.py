"""Which alerts go out: open problems, deduplication, resolution and failed-run streaks.

The state is one JSON file shared by every process that alerts (two Airflow tasks may run
at once). Every read-decide-send-write happens under an exclusive `fcntl` lock on a
sibling `.lock` file, and the file is replaced atomically, so no decision is lost or made
twice. The lock is held while sending: alerts are rare and a second sender must not
decide before the first has recorded what it sent.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from etl.alerts.build import (
    alerts_for_pipeline_failure,
    alerts_for_snapshot,
    iso_time,
    resolved_alert,
)
from etl.alerts.channels import Channel, configured_channels
from etl.alerts.model import Alert
from etl.alerts.settings import alert_state_file

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class Scope:
    """What one run evaluated: an open problem inside it that the run did not see is resolved.

    Contest problems are inside when their contest is in `contest_ids`; the election's own
    pipeline problem when `run_ok` (the run reached the portal and finished).
    """

    election_id: str
    contest_ids: frozenset[str] = frozenset()
    run_ok: bool = False
    snapshot_id: str | None = None
    portal_updated_at: str | None = None
    report_path: str | None = None

    @classmethod
    def for_snapshot(
        cls,
        snapshot_meta: Mapping[str, Any],
        contest_statuses: Mapping[str, tuple[str, str | None]],
        report_path: str | None,
    ) -> Scope:
        """A finished run: every contest that was published or quarantined was evaluated."""
        return cls(
            election_id=str(snapshot_meta["election_id"]),
            # A failed contest was not evaluated: its open quality problems stay open.
            contest_ids=frozenset(c for c, (status, _) in contest_statuses.items() if status != "failed"),
            run_ok=True,
            snapshot_id=str(snapshot_meta["snapshot_id"]),
            portal_updated_at=iso_time(snapshot_meta.get("portal_updated_at")),
            report_path=report_path,
        )

    def covers(self, election_id: str, contest_id: str | None) -> bool:
        """Whether this run re-evaluated the problem slot of (election, contest)."""
        if election_id != self.election_id:
            return False
        return self.run_ok if contest_id is None else contest_id in self.contest_ids


@dataclass(frozen=True)
class DeliveryFailure:
    """One alert a channel did not take, and why."""

    channel: str
    dedupe_key: str
    reason: str


@dataclass(frozen=True)
class DispatchResult:
    """What a dispatch sent (new problems, then resolutions), held back, and failed to deliver."""

    sent: tuple[Alert, ...]
    suppressed: tuple[Alert, ...]
    failures: tuple[DeliveryFailure, ...]


class AlertBook:
    """The alert state file: open problems by slot and each election's failed-run streak."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else alert_state_file()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def dispatch(
        self, alerts: Sequence[Alert], scope: Scope, channels: Sequence[Channel]
    ) -> DispatchResult:
        """Send new problems, hold back open ones, resolve what `scope` no longer sees."""
        with self._transaction() as state:
            return _dispatch(state, alerts, scope, channels)

    def record_run_outcome(self, election_id: str, ok: bool) -> int:
        """Count a run; returns the failed runs in a row (0 after a good run)."""
        with self._transaction() as state:
            return _count_run(state, election_id, ok)

    def snapshot_evaluated(
        self,
        snapshot_meta: Mapping[str, Any],
        dq_results: pd.DataFrame,
        contest_statuses: Mapping[str, tuple[str, str | None]],
        report_path: str | None,
        channels: Sequence[Channel],
        *,
        divisions: pd.DataFrame | None = None,
    ) -> DispatchResult:
        """A run finished a snapshot: end the failure streak, alert, resolve, in one step."""
        alerts = alerts_for_snapshot(
            snapshot_meta, dq_results, contest_statuses, report_path, divisions=divisions
        )
        scope = Scope.for_snapshot(snapshot_meta, contest_statuses, report_path)
        with self._transaction() as state:
            _count_run(state, scope.election_id, ok=True)
            return _dispatch(state, alerts, scope, channels)

    def run_failed(
        self,
        election_id: str,
        reason: str,
        channels: Sequence[Channel],
        *,
        portal_updated_at: str | None = None,
    ) -> DispatchResult:
        """A run failed (portal unreachable, withdrawn, error): count it, alert at the threshold."""
        with self._transaction() as state:
            failures = _count_run(state, election_id, ok=False)
            alerts = alerts_for_pipeline_failure(
                election_id, reason, failures, portal_updated_at=portal_updated_at
            )
            return _dispatch(state, alerts, Scope(election_id), channels)

    def portal_unchanged(self, election_id: str, channels: Sequence[Channel]) -> DispatchResult:
        """A run found the portal up and unchanged: the streak ends, a pipeline alert resolves."""
        with self._transaction() as state:
            _count_run(state, election_id, ok=True)
            return _dispatch(state, [], Scope(election_id, run_ok=True), channels)

    def open_problems(self) -> dict[str, dict[str, Any]]:
        """The open problems by slot, as last alerted."""
        with self._transaction(write=False) as state:
            return dict(state["open"])

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[dict[str, Any]]:
        """Lock, load, hand the state over, and write it back only if nothing raised."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Lock a sibling file: the state file itself is replaced, and a lock on a replaced
        # inode would not exclude a process that opened the new one.
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                state = self._load()
                yield state
                if write:
                    self._save(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": STATE_VERSION, "open": {}, "runs": {}}
        try:
            state: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RuntimeError(
                f"alert state {self.path} is not valid JSON ({exc}); move it aside to start "
                "afresh (open problems will then alert once more)"
            ) from exc
        if state.get("version") != STATE_VERSION:
            raise RuntimeError(
                f"alert state {self.path} has version {state.get('version')!r}, "
                f"this code reads version {STATE_VERSION}"
            )
        return state

    def _save(self, state: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(state, out, ensure_ascii=False, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


def dispatch(
    alerts: Sequence[Alert],
    scope: Scope,
    channels: Sequence[Channel] | None = None,
    state_path: Path | str | None = None,
) -> DispatchResult:
    """`AlertBook.dispatch` on the configured state file and channels (by default)."""
    return AlertBook(state_path).dispatch(alerts, scope, _channels(channels))


def record_run_outcome(election_id: str, ok: bool, state_path: Path | str | None = None) -> int:
    """`AlertBook.record_run_outcome` on the configured state file."""
    return AlertBook(state_path).record_run_outcome(election_id, ok)


def alert_on_snapshot(
    snapshot_meta: Mapping[str, Any],
    dq_results: pd.DataFrame,
    contest_statuses: Mapping[str, tuple[str, str | None]],
    report_path: str | None,
    *,
    divisions: pd.DataFrame | None = None,
    channels: Sequence[Channel] | None = None,
    state_path: Path | str | None = None,
) -> DispatchResult:
    """The alert step after a validated snapshot (what the DAG's alert task and the CLI call)."""
    return AlertBook(state_path).snapshot_evaluated(
        snapshot_meta, dq_results, contest_statuses, report_path, _channels(channels),
        divisions=divisions,
    )


def alert_on_failed_run(
    election_id: str,
    reason: str,
    *,
    portal_updated_at: str | None = None,
    channels: Sequence[Channel] | None = None,
    state_path: Path | str | None = None,
) -> DispatchResult:
    """The alert step after a run that could not produce a snapshot."""
    return AlertBook(state_path).run_failed(
        election_id, reason, _channels(channels), portal_updated_at=portal_updated_at
    )


def alert_on_unchanged_portal(
    election_id: str,
    *,
    channels: Sequence[Channel] | None = None,
    state_path: Path | str | None = None,
) -> DispatchResult:
    """The alert step after a run that found the portal unchanged (ends a failure streak)."""
    return AlertBook(state_path).portal_unchanged(election_id, _channels(channels))


def _deliver(alert: Alert, channels: Sequence[Channel]) -> list[DeliveryFailure]:
    """Send one alert to every channel in order; a failing channel is logged and skipped."""
    failures: list[DeliveryFailure] = []
    for channel in channels:
        try:
            channel.send(alert)
        except Exception as exc:  # one broken channel must not silence the others
            reason = f"{type(exc).__name__}: {exc}"
            logger.error(
                "alert %s (%s) NOT delivered to %s: %s", alert.dedupe_key, alert.title, channel.name, reason
            )
            failures.append(DeliveryFailure(channel.name, alert.dedupe_key, reason))
        else:
            logger.info("alert %s sent to %s", alert.dedupe_key, channel.name)
    return failures


def _channels(channels: Sequence[Channel] | None) -> Sequence[Channel]:
    return configured_channels() if channels is None else channels


def _count_run(state: dict[str, Any], election_id: str, ok: bool) -> int:
    run = state["runs"].setdefault(election_id, {"consecutive_failures": 0})
    run["consecutive_failures"] = 0 if ok else run["consecutive_failures"] + 1
    run["last_run_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    run["last_run_ok"] = ok
    return int(run["consecutive_failures"])


def _dispatch(
    state: dict[str, Any], alerts: Sequence[Alert], scope: Scope, channels: Sequence[Channel]
) -> DispatchResult:
    """The decision and the sending, on a state already locked and loaded."""
    if any(alert.kind == "resolved" for alert in alerts):
        raise ValueError("`resolved` alerts come from the book itself; pass only problems")
    open_problems: dict[str, dict[str, Any]] = state["open"]
    new: dict[str, Alert] = {}
    suppressed: list[Alert] = []
    for alert in alerts:
        known = open_problems.get(alert.problem_key)
        if (known and known["dedupe_key"] == alert.dedupe_key) or alert.dedupe_key in new:
            suppressed.append(alert)
        else:
            # A different set of failed checks in an open slot is a new problem: it alerts
            # and replaces the old one, which is not "resolved" (the contest still fails).
            new[alert.dedupe_key] = alert
    seen_slots = {alert.problem_key for alert in alerts}
    resolved: list[Alert] = []
    for slot, problem in list(open_problems.items()):
        if slot not in seen_slots and scope.covers(problem["election_id"], problem["contest_id"]):
            resolved.append(
                resolved_alert(
                    problem,
                    snapshot_id=scope.snapshot_id,
                    portal_updated_at=scope.portal_updated_at,
                    report_path=scope.report_path,
                )
            )
            del open_problems[slot]
    sent_at = datetime.now(UTC)
    to_send = [*new.values(), *resolved]
    failures = [failure for alert in to_send for failure in _deliver(alert, channels)]
    # Recorded even where a channel failed: the JSON-lines log has it, and re-sending on
    # every run would turn one outage into an alert storm on the channels that work.
    for alert in new.values():
        open_problems[alert.problem_key] = alert.to_record(sent_at)
    logger.info(
        "alerts for %s (snapshot %s): %d new, %d resolved, %d already sent, %d delivery failures",
        scope.election_id, scope.snapshot_id or "-", len(new), len(resolved), len(suppressed),
        len(failures),
    )
    return DispatchResult(tuple(to_send), tuple(suppressed), tuple(failures))
