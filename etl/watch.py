"""Watch the portal's election page with conditional requests; say when the portal changed.

The Airflow trigger `etl.triggers.PortalChangeTrigger` drives this every few seconds in the
triggerer, so a DAG run is created once per portal change rather than once per cron tick.
No Airflow here: the state machine is plain asyncio + httpx, testable on its own.

The portal's state is what its election page says: the sha256 of the page's body (the
`updated` time is on every page, so any update changes it), or "unavailable" once the page
has failed `unavailable_after` polls in a row (a 503 or a maintenance outage is a change the
pipeline must record and alert on; one slow answer under load is not). A `304 Not Modified`
means the body we last read.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from etl.fetch import retry_after_seconds

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

AVAILABLE = "available"
UNAVAILABLE = "unavailable"
# Statuses that say "ask again later" about our request, not "the portal is down".
TOO_FAST = 429
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class PortalState:
    """What the election page showed: a body digest, or unavailable (with why)."""

    status: str
    body_sha256: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    reason: str | None = None

    def same_portal(self, other: PortalState | None) -> bool:
        """True when `other` shows the same portal (validators and reasons aside)."""
        return other is not None and (self.status, self.body_sha256) == (other.status,
                                                                         other.body_sha256)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (kept in Airflow's asset state store between triggerer restarts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> PortalState | None:
        """Inverse of `to_dict`; None for anything that is not a stored state."""
        if not isinstance(value, dict) or value.get("status") not in (AVAILABLE, UNAVAILABLE):
            return None
        return cls(str(value["status"]), value.get("body_sha256"), value.get("etag"),
                   value.get("last_modified"), value.get("reason"))


@dataclass(frozen=True)
class PortalChange:
    """One change of the portal's state, as the trigger's event payload carries it."""

    url: str
    state: PortalState
    previous: PortalState | None
    detected_at: str

    def to_payload(self) -> dict[str, Any]:
        """The TriggerEvent payload (JSON-able)."""
        return {"url": self.url, "status": self.state.status,
                "body_sha256": self.state.body_sha256, "reason": self.state.reason,
                "previous_status": self.previous.status if self.previous else None,
                "previous_body_sha256": self.previous.body_sha256 if self.previous else None,
                "detected_at": self.detected_at}


@dataclass
class ElectionPageWatch:
    """Conditional polls of one page; `poll()` returns a change, or None when nothing changed.

    `reported` is the state last announced (None: nothing announced yet, so the first poll
    reports whatever it finds: the pipeline decides whether that state is new to it).
    """

    url: str
    unavailable_after: int = 2
    reported: PortalState | None = None
    # Validators of the last 200 body, sent as If-None-Match / If-Modified-Since.
    _last_body: PortalState | None = None
    _failures: int = 0
    next_delay_hint: float | None = None
    # What the polls saw, for logs and tests: polls sent, 304 answers, failed polls.
    polls: int = 0
    not_modified: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        if self.reported is not None and self.reported.status == AVAILABLE:
            self._last_body = self.reported

    def _conditional_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._last_body is not None:
            if self._last_body.etag:
                headers["If-None-Match"] = self._last_body.etag
            if self._last_body.last_modified:
                headers["If-Modified-Since"] = self._last_body.last_modified
        return headers

    async def poll(self, client: httpx.AsyncClient) -> PortalChange | None:
        """One conditional GET; the change it shows, if any."""
        import httpx

        self.next_delay_hint = None
        self.polls += 1
        current: PortalState | None
        try:
            response = await client.get(self.url, headers=self._conditional_headers())
        except httpx.HTTPError as exc:
            current = self._failed(f"{exc.__class__.__name__}: {exc}")
        else:
            if response.status_code == 304 and self._last_body is not None:
                self._failures = 0
                self.not_modified += 1
                current = self._last_body
            elif response.status_code == 200:
                self._failures = 0
                current = self._last_body = PortalState(
                    AVAILABLE, hashlib.sha256(response.content).hexdigest(),
                    response.headers.get("etag"), response.headers.get("last-modified"))
            elif response.status_code == TOO_FAST:
                # Our own pace, not the portal's state: slow down, change nothing.
                self.next_delay_hint = retry_after_seconds(response.headers.get("retry-after"))
                log.warning("%s: 429 Too Many Requests, backing off", self.url)
                return None
            else:
                # A 503's Retry-After is not honoured: the portal coming back is what we wait
                # for, and one conditional request every few seconds is no load.
                current = self._failed(f"HTTP {response.status_code}")
        if current is None or current.same_portal(self.reported):
            return None
        change = PortalChange(self.url, current, self.reported,
                              datetime.now(UTC).isoformat(timespec="milliseconds"))
        log.info("%s: portal %s (was %s)", self.url, current.status,
                 self.reported.status if self.reported else "not yet seen")
        self.reported = current
        return change

    def _failed(self, reason: str) -> PortalState | None:
        """Count a failed poll; the unavailable state once they are `unavailable_after` in a row."""
        self._failures += 1
        self.failed += 1
        log.warning("%s: poll failed (%d in a row): %s", self.url, self._failures, reason)
        if self._failures < self.unavailable_after:
            return None
        return PortalState(UNAVAILABLE, reason=reason)

    def delay(self, poll_seconds: float) -> float:
        """Seconds to wait before the next poll: the interval, or longer if the portal asked."""
        hint = self.next_delay_hint
        return poll_seconds if hint is None else min(MAX_BACKOFF_S, max(poll_seconds, hint))
