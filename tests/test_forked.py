"""`etl.forked.ForkedTask`: a stage in a forked child, its result back, its memory not.

`etl run` crawls and assembles in such a child so that the heap the crawl fragments is
not under the quality gate's peak (issue 9's memory budget).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from etl.fetch import DeadlineExceeded
from etl.forked import ChildDied, ForkedTask
from etl.memory import process_memory_mib


def test_the_result_comes_back_from_another_process() -> None:
    task = ForkedTask(lambda: {"pid": os.getpid(), "parent": os.getppid()}, "probe")
    answer = task.result(timeout=30)
    assert answer == {"pid": answer["pid"], "parent": os.getpid()}
    assert answer["pid"] != os.getpid()


def test_the_memory_the_task_used_is_not_the_parents() -> None:
    def allocate() -> float:
        start = process_memory_mib("VmRSS") or 0.0
        block = bytearray(400 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        return (process_memory_mib("VmHWM") or 0.0) - start

    before = process_memory_mib("VmHWM") or 0.0
    assert ForkedTask(allocate, "allocate").result(timeout=60) > 350  # the child's own peak
    assert (process_memory_mib("VmHWM") or 0.0) < before + 50


def test_the_tasks_exception_is_raised_here_with_its_traceback() -> None:
    def crawl() -> None:
        raise DeadlineExceeded("crawl of x hit its deadline: coverage incomplete")

    with pytest.raises(DeadlineExceeded, match="coverage incomplete") as error:
        ForkedTask(crawl, "crawl").result(timeout=30)
    # the child's own traceback, down to the function that raised
    assert any("raised in the crawl process" in note and ", in crawl" in note
               for note in error.value.__notes__)


def test_an_exception_that_cannot_be_pickled_still_says_what_happened() -> None:
    class Odd(Exception):
        def __init__(self) -> None:
            super().__init__("an odd failure")
            self.lock = threading.Lock()  # cannot be pickled

    def fail() -> None:
        raise Odd

    with pytest.raises(RuntimeError, match="Odd: an odd failure"):
        ForkedTask(fail, "odd").result(timeout=30)


def test_a_child_that_dies_is_a_failure_not_a_result() -> None:
    task = ForkedTask(lambda: os.kill(os.getpid(), signal.SIGKILL), "doomed")
    with pytest.raises(ChildDied, match=f"exit code {-signal.SIGKILL}"):
        task.result(timeout=30)


def test_a_child_past_its_time_is_killed() -> None:
    task = ForkedTask(lambda: time.sleep(60), "sleeper")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="sleeper did not finish"):
        task.result(timeout=0.5)
    assert time.monotonic() - started < 10
    assert not task._process.is_alive()


def test_a_child_whose_parent_died_before_it_asked_to_die_with_it_ends_at_once() -> None:
    from etl.forked import die_with_parent

    pid = os.fork()
    if pid == 0:  # the child: pid 1 is not its parent, as if its own had died meanwhile
        die_with_parent(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_a_crawl_worker_killed_mid_crawl_is_an_error_not_a_hang(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from etl import crawl

    # Pages served from an (empty) archive: each batch comes back at once, as failures.
    spec = crawl.SourceSpec("http://127.0.0.1:9", tmp_path / "raw", archived_pages=())
    pool = crawl._ForkedPool(spec, processes=2, threads=1)
    try:
        killed = pool._processes[0]
        assert killed.pid is not None
        os.kill(killed.pid, signal.SIGKILL)
        killed.join(timeout=10)
        done = []
        # Found out when a batch is written to its pipe, or when its answer is awaited.
        with pytest.raises(crawl.CrawlWorkerDied, match=f"{killed.pid}.*exit code -9"):
            for n in range(4):  # two batches a worker
                pool.submit(n, [f"/p/{n}"])
            for _ in range(4):
                done.append(pool.next_done(timeout=30))
        assert all(outcomes[0].failure is not None for _, outcomes in done)  # the live one's
    finally:
        pool.shutdown(wait=False)
    for process in pool._processes:
        process.join(timeout=10)
        assert not process.is_alive()  # the live one saw its pipe close and ended
