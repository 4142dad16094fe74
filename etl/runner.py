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
the lock; killed by a signal, e.g. out of memory) is tried again at a later poll even if
the page did not change again, after a pause that doubles up to a minute while it keeps
failing. The first poll always starts a cycle: the cycle's own change detection decides
whether there is anything new.

The runner reads the code and the expectation suites once: restart it after changing them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etl.watch import ElectionPageWatch

log = logging.getLogger(__name__)

EXIT_ERROR = 1  # as `etl.__main__`'s (not imported: it is the running `__main__`)
COMPLETED = (0, 3)  # exit codes of a cycle that ran to its end (3: a contest quarantined)
MAX_RETRY_PAUSE_S = 60.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# The line `CycleOutcome.line` prints: number, exit code, seconds, CPU seconds.
CYCLE_LINE = re.compile(r"^cycle (\d+): exit (-?\d+) in ([\d.]+)s \(([\d.]+) CPU-s\)$",
                        re.MULTILINE)


@dataclass(frozen=True)
class CycleOutcome:
    """One forked cycle: its exit code (negative: killed by that signal), wall and CPU
    seconds (its own processes included)."""

    number: int
    exit_code: int
    seconds: float
    cpu_seconds: float

    def line(self) -> str:
        """The line the runner prints for it (benchmarks and tests read it)."""
        return (f"cycle {self.number}: exit {self.exit_code} in {self.seconds:.2f}s "
                f"({self.cpu_seconds:.2f} CPU-s)")


def warm_up() -> float:
    """Import what a cycle needs and build the GX context, once; seconds it took.

    A step that fails is logged: the cycle that needs it then fails loudly in its stage.
    """
    from etl import cycle
    from etl.pagecache import parser_version
    from etl.quality.memo import code_versions

    started = time.perf_counter()
    # The digests of the code that reads pages and runs the gate, which tag the page cache
    # and the gate memo: of the code the cycles run, even if the files change under it.
    for step in (cycle.warm_imports, cycle.warm_quality_gate, parser_version, code_versions):
        cycle.warm(step, "in the runner's warm-up; the cycles will do it themselves")
    # What the children inherit is never garbage: out of their collector's way, and shared
    # with them rather than copied when a collection would touch it.
    gc.freeze()
    return time.perf_counter() - started


def fold_between_cycles(args: argparse.Namespace) -> None:
    """Checkpoint the raw archive's index whatever the last cycle added to it, before the
    runner polls again.

    Otherwise the next cycle's change detection, on its critical path, reads the lines
    the last one appended (a re-stamped kg2021: ~5,000) and writes the checkpoint itself
    (from 2,000 lines on): ~0.09 s here, the checkpoint's read and rewrite at 100,000
    precincts. The archive opened for it is dropped again, and its memory handed back: what
    the runner holds, every cycle inherits.
    """
    from etl import cycle
    from etl.memory import release_memory

    if cycle.fold_archive(args.raw_dir, min_bytes=1):
        release_memory(after="checkpointing the raw archive between cycles")


def run_forked(number: int, cycle: Callable[[], int]) -> CycleOutcome:
    """Run `cycle` in a forked child; wait for it and return what it did.

    The stop signals are blocked around the fork, so neither process is interrupted half
    way through it. The child ignores SIGINT (a Ctrl-C reaches the whole process group:
    the runner lets the cycle end) and takes SIGTERM's default (a cycle killed is safe:
    nothing is published half way). A fork that fails counts as a failed cycle.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.error("cycle %d could not start: fork failed: %s", number, exc)
        return CycleOutcome(number, EXIT_ERROR, 0.0, 0.0)
    if pid == 0:  # the child: run the cycle, never return into the runner's loop
        code = EXIT_ERROR
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            code = cycle()
        except BaseException:
            log.exception("cycle %d failed", number)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _, status, usage = os.wait4(pid, 0)  # a stop signal only sets the runner's flag
    return CycleOutcome(number, os.waitstatus_to_exitcode(status),
                        round(time.perf_counter() - started, 3),
                        round(usage.ru_utime + usage.ru_stime, 3))


def retry_pause(interval: float, failures: int) -> float:
    """Seconds before trying again after `failures` incomplete cycles in a row."""
    return min(MAX_RETRY_PAUSE_S, interval * 2.0 ** min(failures - 1, 16))


def watch_and_run(args: argparse.Namespace, cycle: Callable[[], int],
                  warm: Callable[[], float] = warm_up) -> int:
    """Poll every `args.interval` seconds; run `cycle` in a child when the portal changed.

    Runs until SIGINT or SIGTERM (after the cycle in progress, or at once between two
    polls), or, with `args.cycles`, after that many cycles; returns the last cycle's exit
    code (0 if none; 1 if it was killed by a signal).
    """
    from etl import config
    from etl.crawl import election_path
    from etl.fetch import absolute_url
    from etl.watch import ElectionPageWatch

    stop = _StopFlag()
    previous = {number: signal.signal(number, stop.handler) for number in STOP_SIGNALS}
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        httpx_log.setLevel(logging.WARNING)  # a line per poll otherwise
    outcome: CycleOutcome | None = None
    watch: ElectionPageWatch | None = None
    try:
        log.info("warm-up: imports and the GX context ready in %.2fs", warm())
        fold_between_cycles(args)
        url = absolute_url(args.portal or config.portal_url(),
                           election_path(args.lang or config.portal_lang(), args.election))
        watch = ElectionPageWatch(url)
        outcome = _poll_and_fork(args, cycle, watch, stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if stop.requested:
        log.info("stopped by a signal")
    if watch is not None:
        print(f"watched {watch.url}: {watch.polls} polls ({watch.not_modified} not modified, "
              f"{watch.failed} failed), {outcome.number if outcome else 0} cycles", flush=True)
    if outcome is None:
        return 0
    return outcome.exit_code if outcome.exit_code >= 0 else EXIT_ERROR


class _StopFlag:
    """Set by SIGINT/SIGTERM. A flag, not a `threading.Event`: a handler runs between two
    bytecodes of the main thread, which may hold the Event's lock then."""

    def __init__(self) -> None:
        self.requested = False

    def handler(self, signum: int, frame: object) -> None:
        self.requested = True

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or less once a stop is requested."""
        end = time.monotonic() + seconds
        while not self.requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(0.1, left))


def _poll_and_fork(args: argparse.Namespace, cycle: Callable[[], int],
                   watch: ElectionPageWatch, stop: _StopFlag) -> CycleOutcome | None:
    import httpx

    from etl import config

    outcome: CycleOutcome | None = None
    failures = 0
    retry_at: float | None = None
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(timeout=10.0, follow_redirects=True,
                               headers={"User-Agent": config.USER_AGENT})
    try:
        while not stop.requested and (args.cycles is None or
                                     (outcome.number if outcome else 0) < args.cycles):
            change = loop.run_until_complete(watch.poll(client))
            due = retry_at is not None and time.monotonic() >= retry_at
            if change is not None or due:
                outcome = run_forked(outcome.number + 1 if outcome else 1, cycle)
                log.info("%s", outcome.line())  # with its time, in the log
                print(outcome.line(), flush=True)
                if not stop.requested and (args.cycles is None or outcome.number < args.cycles):
                    fold_between_cycles(args)
                # Not completed (an error, the election busy, killed): try again later even
                # if the portal does not change again.
                failures = 0 if outcome.exit_code in COMPLETED else failures + 1
                retry_at = (time.monotonic() + retry_pause(args.interval, failures)
                            if failures else None)
                continue
            stop.sleep(watch.delay(args.interval))
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    return outcome
