"""Run a stage in a forked child process: its result comes back, its memory does not stay.

`etl run` assembles, validates and loads in one process. Its crawl's coordinator makes and
drops millions of small objects (each page's records, the page cache); when it ran in that
process, the heap they fragmented stayed: after a 100,000-precinct crawl ~170 MiB more
than a fresh process holds, with the same live objects (`sys.getallocatedblocks`), which
no `malloc_trim` hands back, and under the quality gate's peak (issue 9's 2 GB budget).
A stage run in a child leaves nothing behind: the child exits.

The child is forked (it inherits the arguments, nothing is pickled on the way in); what
it returns, or the exception it raised (with its traceback as a note), is pickled back.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

T = TypeVar("T")


class ChildDied(RuntimeError):
    """The child process ended without a result (killed, or it crashed)."""


class ForkedTask(Generic[T]):
    """`task()` running in a forked child from construction on; `result()` waits for it."""

    def __init__(self, task: Callable[[], T], name: str) -> None:
        context = multiprocessing.get_context("fork")
        self.name = name
        self._receive, send = context.Pipe(duplex=False)
        # Not a daemon: daemonic processes may not start the crawl's worker processes.
        self._process = context.Process(target=_run, args=(task, send, os.getpid()), name=name)
        self._process.start()
        send.close()  # the child's end; the pipe reports EOF if the child dies

    def done(self, timeout: float = 0.0) -> bool:
        """Whether the result (or the child's end) is there, waiting up to `timeout`."""
        return bool(self._receive.poll(timeout))

    def result(self, timeout: float | None = None) -> T:
        """The task's return value, or its exception raised here; after `timeout` seconds
        the child is killed and `TimeoutError` raised."""
        try:
            if not self._receive.poll(timeout):
                self._process.kill()
                raise TimeoutError(f"{self.name} did not finish within {timeout:.0f}s; killed")
            try:
                status, value, child_traceback = pickle.loads(self._receive.recv_bytes())
            except EOFError:
                self._process.join()
                raise ChildDied(f"{self.name} ended without a result (exit code "
                                f"{self._process.exitcode})") from None
        except BaseException:
            # Interrupted while waiting (a signal's exception, a task timeout): the child's
            # answer is not wanted, so it is not waited for either.
            if self._process.is_alive():
                self._process.kill()
            raise
        finally:
            self._process.join()
            self._receive.close()
        if status == "error":
            value.add_note(f"raised in the {self.name} process:\n{child_traceback}")
            raise value
        return value

    def cancel(self) -> None:
        """Kill the child if it still runs (its result is not wanted any more)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._receive.close()


def _run(task: Callable[[], object], send: Connection, parent: int) -> None:
    die_with_parent(parent)
    try:
        payload = ("ok", task(), "")
    except BaseException as exc:  # every failure goes back to the parent
        payload = ("error", exc, traceback.format_exc())
    try:
        data = pickle.dumps(payload)
    except Exception as exc:  # an exception (or result) that cannot be pickled
        error = RuntimeError(f"{type(payload[1]).__name__}: {payload[1]}")
        data = pickle.dumps(("error", error, payload[2] or repr(exc)))
    send.send_bytes(data)
    send.close()


def die_with_parent(parent: int) -> None:
    """Linux: when this process's parent dies (even by SIGKILL), this one gets SIGTERM
    instead of running on as an orphan. Call it first thing in a forked child (a fork
    clears the setting) with the pid of the process that forked it: if that one died
    before the call, the signal will never come, and the child ends here. The signal's
    default action is restored first: a handler inherited from the parent (a scheduler's
    task runner installs one) is the parent's business, not this child's."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
