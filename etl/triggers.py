"""Airflow's side of event-driven scheduling: a trigger that fires when the portal changed.

`PortalChangeTrigger` runs in the triggerer (an `AssetWatcher` on the Asset
`cec://<election>/portal`, see `portal_asset()`): every `poll_seconds` it sends a conditional
GET for the election page (`etl.watch`) and yields one event per change of the portal's
state, none while the portal is unchanged. Each event is an asset event; the election DAG,
scheduled on that asset, runs once per change (events arriving during a run collapse into the
next one, as `max_active_runs=1`).

Imported by DAG files at parse time: only Airflow's trigger base and the standard library
here; httpx and `etl.watch` are imported when the trigger runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetWatcher
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

if TYPE_CHECKING:
    from etl.elections import ElectionRules

CLASSPATH = "etl.triggers.PortalChangeTrigger"
# Key under which the last announced portal state survives a triggerer restart.
STATE_KEY = "portal_state"


class PortalChangeTrigger(BaseEventTrigger):
    """Poll one election page with conditional requests; fire once per portal change.

    Args:
        election_id: whose page (`/<lang>/results/<election_id>/`).
        lang: portal language section.
        portal_url: base URL; None = `CEC_PORTAL_URL` as the triggerer sees it.
        poll_seconds: pause between two polls.
        timeout: seconds per request.
        unavailable_after: failed polls in a row before "unavailable" is announced.
        start, end: ISO date-times of the scraping window; outside it nothing is polled.
    """

    def __init__(self, election_id: str, lang: str = "ru", portal_url: str | None = None,
                 poll_seconds: float = 5.0, timeout: float = 10.0, unavailable_after: int = 2,
                 start: str | None = None, end: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.election_id = election_id
        self.lang = lang
        self.portal_url = portal_url
        self.poll_seconds = float(poll_seconds)
        self.timeout = float(timeout)
        self.unavailable_after = int(unavailable_after)
        self.start = start
        self.end = end

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and the keyword arguments that rebuild this trigger in the triggerer."""
        return CLASSPATH, {
            "election_id": self.election_id, "lang": self.lang, "portal_url": self.portal_url,
            "poll_seconds": self.poll_seconds, "timeout": self.timeout,
            "unavailable_after": self.unavailable_after, "start": self.start, "end": self.end,
        }

    def page_url(self) -> str:
        """Absolute URL of the watched election page (imports `etl.crawl`: call off the loop)."""
        import httpx  # noqa: F401  (imported here, in the thread, for run())

        import etl.watch  # noqa: F401
        from etl import config
        from etl.crawl import election_path
        from etl.fetch import absolute_url

        return absolute_url(self.portal_url or config.portal_url(),
                            election_path(self.lang, self.election_id))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll forever (the triggerer cancels it); yield an event per portal change."""
        # Importing the pipeline's modules (parsers, requests) takes seconds on a busy machine:
        # in a thread, so the triggerer's event loop (every other trigger) never waits on it.
        url = await asyncio.to_thread(self.page_url)
        import httpx

        from etl import config
        from etl.watch import ElectionPageWatch, PortalState

        watch = ElectionPageWatch(url, unavailable_after=self.unavailable_after,
                                  reported=PortalState.from_dict(await self._stored_state()))
        start = datetime.fromisoformat(self.start) if self.start else None
        end = datetime.fromisoformat(self.end) if self.end else None
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=True,
                                     headers={"User-Agent": config.USER_AGENT}) as client:
            while True:
                now = datetime.now(UTC)
                if (start and now < start) or (end and now >= end):
                    # Outside the window: look again in a while (the window may be edited).
                    wait = (start - now).total_seconds() if start and now < start else 300.0
                    await asyncio.sleep(min(300.0, max(self.poll_seconds, wait)))
                    continue
                change = await watch.poll(client)
                if change is not None:
                    self.log.info("portal of %s changed: %s", self.election_id,
                                  change.state.status)
                    # Announce first, then remember: a crash in between repeats an event
                    # (the DAG sees an unchanged portal and skips), never loses one.
                    yield TriggerEvent(change.to_payload())
                    await self._store_state(change.state.to_dict())
                await asyncio.sleep(watch.delay(self.poll_seconds))

    async def _stored_state(self) -> Any:
        store = self.asset_state_store
        return await store.aget(STATE_KEY) if store is not None else None

    async def _store_state(self, state: dict[str, Any]) -> None:
        store = self.asset_state_store
        if store is not None:
            await store.aset(STATE_KEY, state)


def portal_asset(rules: ElectionRules) -> Asset:
    """`cec://<election>/portal`, updated by a `PortalChangeTrigger` watching the portal."""
    schedule = rules.schedule
    trigger = PortalChangeTrigger(
        election_id=rules.election_id, lang=rules.lang,
        poll_seconds=schedule.poll_seconds if schedule else 5.0,
        start=schedule.start.isoformat() if schedule else None,
        end=schedule.end.isoformat() if schedule else None,
    )
    return Asset(f"cec://{rules.election_id}/portal",
                 watchers=[AssetWatcher(name=f"cec_portal_watch__{rules.election_id}",
                                        trigger=trigger)])


def election_schedule(rules: ElectionRules) -> Any:
    """The DAG's `schedule` from the rule file: the watched portal asset, a cron, or None."""
    schedule = rules.schedule
    if schedule is None:
        return None
    if schedule.mode == "watch":
        return [portal_asset(rules)]
    return schedule.cron
