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
from etl.alerts.model import Alert, alert_from_record
from etl.alerts.settings import alert_after_channel_failed_runs, alert_state_file

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# The JSON-lines channel's name: the record nothing else replaces, so its failure fails the run.
ALERT_LOG_CHANNEL = "jsonl"


class AlertLogError(RuntimeError):
    """The JSON-lines alert log could not be written: the run must fail, loudly."""


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
            result = _dispatch(state, alerts, scope, channels)
        return _log_written(result)

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
            result = _dispatch(state, alerts, scope, channels)
        return _log_written(result)

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
            result = _dispatch(state, alerts, Scope(election_id), channels)
        return _log_written(result)

    def portal_unchanged(self, election_id: str, channels: Sequence[Channel]) -> DispatchResult:
        """A run found the portal up and unchanged: the streak ends, a pipeline alert resolves."""
        with self._transaction() as state:
            _count_run(state, election_id, ok=True)
            result = _dispatch(state, [], Scope(election_id, run_ok=True), channels)
        return _log_written(result)

    def undelivered(self) -> dict[str, list[dict[str, Any]]]:
        """Alerts a channel has not taken yet, by channel: retried on the next dispatch."""
        with self._transaction(write=False) as state:
            return {name: list(queue) for name, queue in state.get("undelivered", {}).items()}

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


def _deliver(alert: Alert, channel: Channel) -> DeliveryFailure | None:
    """Send one alert to one channel; a failure is logged and returned, never raised."""
    try:
        channel.send(alert)
    except Exception as exc:  # one broken channel must not silence the others
        reason = f"{type(exc).__name__}: {exc}"
        logger.error(
            "alert %s (%s) NOT delivered to %s: %s", alert.dedupe_key, alert.title, channel.name, reason
        )
        return DeliveryFailure(channel.name, alert.dedupe_key, reason)
    logger.info("alert %s sent to %s", alert.dedupe_key, channel.name)
    return None


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
    queues: dict[str, list[dict[str, Any]]] = state.setdefault("undelivered", {})
    # What a channel did not take on an earlier run goes first, in order; a channel
    # that still fails keeps its queue, and this run's alerts join the end of it.
    tried = {c.name for c in channels if queues.get(c.name)}
    failures = _retry_undelivered(queues, channels)
    for alert in to_send:
        for channel in channels:
            queue = queues.get(channel.name)
            if queue:  # the channel failed this run already: keep the order, do not wait again
                queue.append(alert.to_record(sent_at))
                continue
            tried.add(channel.name)
            failure = _deliver(alert, channel)
            if failure is not None:
                failures.append(failure)
                queues.setdefault(channel.name, []).append(alert.to_record(sent_at))
    # Recorded even where a channel failed: the queue above re-sends it to that channel
    # only, so one outage does not become an alert storm on the channels that work.
    for alert in new.values():
        open_problems[alert.problem_key] = alert.to_record(sent_at)
    failing = {f.channel for f in failures}
    failures += _channel_streaks(state, scope, channels, tried, failing, sent_at)
    for name in [n for n, queue in queues.items() if not queue]:
        del queues[name]
    logger.info(
        "alerts for %s (snapshot %s): %d new, %d resolved, %d already sent, %d delivery "
        "failures, %d waiting for a retry",
        scope.election_id, scope.snapshot_id or "-", len(new), len(resolved), len(suppressed),
        len(failures), sum(len(q) for q in queues.values()),
    )
    return DispatchResult(tuple(to_send), tuple(suppressed), tuple(failures))


def _retry_undelivered(
    queues: dict[str, list[dict[str, Any]]], channels: Sequence[Channel]
) -> list[DeliveryFailure]:
    """Re-send each channel's queue in order; stop at a channel's first failure."""
    failures: list[DeliveryFailure] = []
    for channel in channels:
        queue = queues.get(channel.name) or []
        while queue:
            alert = alert_from_record(queue[0])
            failure = _deliver(alert, channel)
            if failure is not None:
                failures.append(failure)
                break
            logger.info("alert %s re-delivered to %s", alert.dedupe_key, channel.name)
            queue.pop(0)
    configured = {c.name for c in channels}
    for name, queue in queues.items():
        if queue and name not in configured:
            logger.error("%d alert(s) for channel %s wait for delivery but the channel is no "
                         "longer configured", len(queue), name)
    return failures


def _channel_streaks(
    state: dict[str, Any], scope: Scope, channels: Sequence[Channel], tried: set[str],
    failing: set[str], sent_at: datetime,
) -> list[DeliveryFailure]:
    """Count each channel's failed runs in a row; at the threshold, tell the other channels."""
    streaks: dict[str, dict[str, Any]] = state.setdefault("channels", {})
    threshold = alert_after_channel_failed_runs()
    failures: list[DeliveryFailure] = []
    for name in sorted(tried):
        streak = streaks.setdefault(name, {"consecutive_failed_runs": 0, "alerted": False})
        if name not in failing:
            if streak["consecutive_failed_runs"]:
                logger.info("alert channel %s delivers again after %d failed run(s)", name,
                            streak["consecutive_failed_runs"])
            streak.update(consecutive_failed_runs=0, alerted=False)
            continue
        streak["consecutive_failed_runs"] += 1
        runs = streak["consecutive_failed_runs"]
        if runs < threshold or streak["alerted"]:
            continue
        others = [c for c in channels if c.name != name and c.name not in failing]
        waiting = len(state["undelivered"].get(name, []))
        alert = Alert(
            kind="pipeline_failed", severity="critical", election_id=scope.election_id,
            contest_id=None, checks=(f"channel:{name}",), snapshot_id=scope.snapshot_id,
            portal_updated_at=scope.portal_updated_at,
            title=f"ALERT CHANNEL DOWN {name}: {runs} runs in a row without delivering",
            message=(f"The alert channel {name} failed on {runs} runs in a row; {waiting} "
                     "alert(s) wait for it and are retried on every run. Check its "
                     "connection or endpoint."),
        )
        logger.error("%s", alert.title)
        for channel in others:
            failure = _deliver(alert, channel)
            if failure is not None:
                failures.append(failure)
        streak["alerted"] = bool(others)
        streak["alerted_at"] = sent_at.isoformat(timespec="seconds")
    return failures


def _log_written(result: DispatchResult) -> DispatchResult:
    """Raise `AlertLogError` if the JSON-lines log missed an alert (after the state is saved)."""
    missed = [f for f in result.failures if f.channel == ALERT_LOG_CHANNEL]
    if missed:
        raise AlertLogError(
            f"the JSON-lines alert log could not be written ({missed[0].reason}); "
            f"{len(missed)} alert(s) are queued and retried on the next run"
        )
    return result
