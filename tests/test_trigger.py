"""Event-driven scheduling: the portal watcher fires once per portal change, never per poll.

The trigger's own async `run()` (what the triggerer drives) against the real replica over
HTTP: a change fires one event, an unchanged portal none; a withdrawal (503) fires one
"unavailable" event, the return one "available" event; one transient 503 fires nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from etl.replica import ReplicaServer

pytestmark = pytest.mark.airflow

POLL = 0.2  # seconds between polls in these tests (the rule file says 3)
QUIET = 1.5  # ~7 polls: long enough that a per-poll event would show


@pytest.fixture(scope="module")
def server() -> Iterator[ReplicaServer]:
    with ReplicaServer() as replica:
        yield replica


@pytest.fixture
def replica_at(server: ReplicaServer):  # type: ignore[no-untyped-def]
    """The module's replica at a given snapshot, faults cleared before and after."""
    def at(label: str) -> ReplicaServer:
        server.clear_faults()
        server.goto(label)
        return server

    yield at
    server.clear_faults()


class EventCollector:
    """Drive a trigger's `run()` in a task and keep what it yields (with nothing mocked)."""

    def __init__(self, trigger: Any) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.trigger = trigger
        self.task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        async for event in self.trigger.run():
            await self.events.put(event.payload)

    def start(self) -> None:
        self.task = asyncio.create_task(self._pump())

    async def next(self, within: float = 60.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), within)

    async def none_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.task is not None and not self.task.done(), "the trigger stopped polling"
        assert self.events.empty(), f"unexpected event: {self.events.get_nowait()}"

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def make_trigger(base_url: str, **overrides: Any) -> Any:
    from etl.triggers import PortalChangeTrigger

    kwargs = {"election_id": "jk2021", "lang": "ru", "portal_url": base_url,
              "poll_seconds": POLL, "timeout": 5.0, "unavailable_after": 2, **overrides}
    trigger = PortalChangeTrigger(**kwargs)
    # What the triggerer does: rebuild it from its serialized form.
    classpath, serialized = trigger.serialize()
    assert classpath == "etl.triggers.PortalChangeTrigger"
    return PortalChangeTrigger(**serialized)


def test_one_event_per_portal_change_none_while_unchanged(replica_at) -> None:
    async def scenario(replica: ReplicaServer) -> None:
        watcher = EventCollector(make_trigger(replica.base_url))
        watcher.start()
        first = await watcher.next()
        # Nothing announced before: the first state seen is reported (the DAG decides).
        assert first["status"] == "available" and first["previous_status"] is None
        assert first["url"] == f"{replica.base_url}/ru/results/jk2021/"
        await watcher.none_for(QUIET)

        replica.goto("counting-2")
        second = await watcher.next()
        assert second["status"] == "available"
        assert second["previous_body_sha256"] == first["body_sha256"]
        assert second["body_sha256"] != first["body_sha256"]
        await watcher.none_for(QUIET)

        replica.goto("withdrawn-503")
        withdrawn = await watcher.next()
        assert withdrawn["status"] == "unavailable" and withdrawn["reason"] == "HTTP 503"
        await watcher.none_for(QUIET)  # still down: nothing new to say

        replica.goto("preliminary")
        back = await watcher.next()
        assert back["status"] == "available" and back["previous_status"] == "unavailable"
        assert back["body_sha256"] not in (first["body_sha256"], second["body_sha256"])
        await watcher.none_for(QUIET)
        await watcher.stop()

    asyncio.run(scenario(replica_at("counting-1")))


def test_a_single_failed_poll_is_not_a_change(replica_at) -> None:
    async def scenario(replica: ReplicaServer) -> None:
        watcher = EventCollector(make_trigger(replica.base_url, unavailable_after=3))
        watcher.start()
        await watcher.next()
        # Two 503s in a row (under load), then the same page again: no event at all.
        replica.set_faults(status=503, status_count=2, path_regex=r"^/ru/results/jk2021/$")
        await watcher.none_for(QUIET)
        replica.clear_faults()
        replica.set_faults(status=503, path_regex=r"^/ru/results/jk2021/$")
        down = await watcher.next()
        assert down["status"] == "unavailable"
        await watcher.stop()

    asyncio.run(scenario(replica_at("counting-1")))


def test_polls_are_conditional_requests(replica_at) -> None:
    """After the first 200, the page is asked for with its validators and answered 304."""
    import httpx

    from etl.watch import ElectionPageWatch

    async def scenario(replica: ReplicaServer) -> ElectionPageWatch:
        watch = ElectionPageWatch(f"{replica.base_url}/ru/results/jk2021/")
        async with httpx.AsyncClient(timeout=5.0) as client:
            assert await watch.poll(client) is not None
            for _ in range(3):
                assert await watch.poll(client) is None
            replica.goto("counting-3")
            change = await watch.poll(client)
        assert change is not None and change.state.etag
        return watch

    watch = asyncio.run(scenario(replica_at("counting-2")))
    assert (watch.polls, watch.not_modified, watch.failed) == (5, 3, 0)


def test_the_trigger_resumes_from_the_stored_state_without_a_spurious_event(replica_at) -> None:
    """After a triggerer restart the last announced state (asset state store) is not re-sent."""
    from etl.watch import ElectionPageWatch, PortalState

    class Store:
        """The asset state store's async interface, a dict behind it (Airflow's needs a DB)."""

        def __init__(self) -> None:
            self.values: dict[str, Any] = {}

        async def aget(self, key: str, default: Any = None) -> Any:
            return self.values.get(key, default)

        async def aset(self, key: str, value: Any) -> None:
            self.values[key] = value

    async def scenario(replica: ReplicaServer) -> None:
        store = Store()
        first = EventCollector(make_trigger(replica.base_url))
        first.trigger.asset_state_store = store
        first.start()
        announced = await first.next()
        await first.none_for(POLL * 2)
        await first.stop()
        stored = PortalState.from_dict(store.values["portal_state"])
        assert stored is not None and stored.body_sha256 == announced["body_sha256"]
        assert ElectionPageWatch("x", reported=stored).reported == stored

        restarted = EventCollector(make_trigger(replica.base_url))
        restarted.trigger.asset_state_store = store
        restarted.start()
        await restarted.none_for(QUIET)
        replica.goto("counting-2")
        assert (await restarted.next())["previous_body_sha256"] == announced["body_sha256"]
        await restarted.stop()

    asyncio.run(scenario(replica_at("counting-1")))


def test_no_poll_outside_the_election_window(replica_at) -> None:
    """After the window's end the trigger sends nothing, so it can announce nothing."""
    async def scenario(replica: ReplicaServer) -> None:
        ended = EventCollector(make_trigger(replica.base_url, start="2021-11-28T20:00:00+06:00",
                                            end="2021-12-16T00:00:00+06:00"))
        ended.start()
        await ended.none_for(QUIET)
        await ended.stop()
        # The same trigger inside its window announces the portal at once.
        open_now = EventCollector(make_trigger(replica.base_url, start="2021-11-28T20:00:00+06:00",
                                               end="2999-01-01T00:00:00+00:00"))
        open_now.start()
        assert (await open_now.next())["status"] == "available"
        await open_now.stop()

    asyncio.run(scenario(replica_at("counting-1")))
