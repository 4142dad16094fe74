"""`python -m etl watch`: a cycle each time the portal changes, from one warm process.

`python -m etl run` (cron, an Airflow task) pays on every cycle for a new interpreter and its
imports, Great Expectations' import and context the largest (~1.5 CPU-s of a 2-core
machine's cycle, on its critical path when a page changed). This runner pays for them once:
it imports what a cycle needs and builds the GX context, then polls the election page with
conditional requests (`etl.watch.ElectionPageWatch`, as the Airflow trigger does) and, when
the page changed, forks a child that runs the cycle exactly as `etl run` does: the same
lock, stages, exit codes, alerts and summary. The child starts with the warm modules and
context (copy on write); its memory, and a crash, end with it.

A cycle that did not complete (exit 1: error or portal unavailable; 4: another cycle held
the lock) is tried again at a later poll even if the page did not change again, after a
pause that doubles up to a minute while it keeps failing. The first poll always starts a
cycle: the cycle's own change detection decides whether there is anything new.

The runner reads the code and the expectation suites once: restart it after changing them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_BUSY = 4
INCOMPLETE = (EXIT_ERROR, EXIT_BUSY)  # exit codes of a cycle to try again
MAX_RETRY_PAUSE_S = 60.0


@dataclass(frozen=True)
class CycleOutcome:
    """One forked cycle: its exit code (negative: killed by that signal), wall and CPU
    seconds (its own processes included)."""

    number: int
    exit_code: int
    seconds: float
    cpu_seconds: float
    interrupted: bool = False  # the runner was asked to stop while it ran

    def line(self) -> str:
        """The line the runner prints for it (benchmarks and tests read it)."""
        return (f"cycle {self.number}: exit {self.exit_code} in {self.seconds:.2f}s "
                f"({self.cpu_seconds:.2f} CPU-s)")


def warm_up() -> float:
    """Import what a cycle needs and build the GX context, once; seconds it took.

    A step that fails is logged: the cycle that needs it then fails loudly in its stage.
    """
    from etl import cycle

    started = time.perf_counter()
    for step in (cycle.warm_imports, cycle.warm_quality_gate):
        try:
            step()
        except Exception:
            log.exception("warm-up step %s failed; cycles will do it themselves",
                          step.__name__)
    # What the children inherit is never garbage: out of their collector's way, and shared
    # with them rather than copied when a collection would touch it.
    gc.freeze()
    return time.perf_counter() - started


def run_forked(number: int, cycle: Callable[[], int]) -> CycleOutcome:
    """Run `cycle` in a forked child; wait for it and return what it did."""
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: run the cycle, never return into the runner's loop
        code = EXIT_ERROR
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = cycle()
        except BaseException:
            log.exception("cycle %d failed", number)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    interrupted = False
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except KeyboardInterrupt:
            # The runner is asked to stop: the cycle in progress ends first (it holds the
            # election's lock and may be publishing).
            log.warning("stopping after cycle %d (process %d) ends", number, pid)
            interrupted = True
    return CycleOutcome(number, os.waitstatus_to_exitcode(status),
                        round(time.perf_counter() - started, 3),
                        round(usage.ru_utime + usage.ru_stime, 3), interrupted)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def watch_and_run(args: argparse.Namespace, cycle: Callable[[], int]) -> int:
    """Poll every `args.interval` seconds; run `cycle` in a child when the portal changed.

    Runs until interrupted (SIGINT, SIGTERM: after the cycle in progress), or, with
    `args.cycles`, after that many cycles; returns the last cycle's exit code (0 if none).
    """
    import httpx

    from etl import config
    from etl.crawl import election_path
    from etl.fetch import absolute_url
    from etl.watch import ElectionPageWatch

    signal.signal(signal.SIGTERM, _stop_on_signal)
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        httpx_log.setLevel(logging.WARNING)  # a line per poll otherwise
    log.info("warm-up: imports and the GX context ready in %.2fs", warm_up())
    url = absolute_url(args.portal or config.portal_url(),
                       election_path(args.lang or config.portal_lang(), args.election))
    watch = ElectionPageWatch(url)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(timeout=10.0, follow_redirects=True,
                               headers={"User-Agent": config.USER_AGENT})
    outcome: CycleOutcome | None = None
    failures = 0
    retry_at: float | None = None
    try:
        while args.cycles is None or (outcome.number if outcome else 0) < args.cycles:
            change = loop.run_until_complete(watch.poll(client))
            due = retry_at is not None and time.monotonic() >= retry_at
            if change is not None or due:
                outcome = run_forked(outcome.number + 1 if outcome else 1, cycle)
                print(outcome.line(), flush=True)
                if outcome.interrupted:
                    break
                failures = failures + 1 if outcome.exit_code in INCOMPLETE else 0
                retry_at = (time.monotonic() + min(MAX_RETRY_PAUSE_S,
                                                   args.interval * 2 ** (failures - 1))
                            if failures else None)
                continue
            time.sleep(watch.delay(args.interval))
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    print(f"watched {url}: {watch.polls} polls ({watch.not_modified} not modified, "
          f"{watch.failed} failed), {outcome.number if outcome else 0} cycles", flush=True)
    return outcome.exit_code if outcome and outcome.exit_code >= 0 else (
        EXIT_ERROR if outcome else 0)
