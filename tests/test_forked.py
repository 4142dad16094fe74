"""`etl.forked.ForkedTask`: a stage in a forked child, its result back, its memory not.

`etl run` crawls and assembles in such a child so that the heap the crawl fragments is
not under the quality gate's peak (issue 9's memory budget).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

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


def test_a_crawl_worker_killed_mid_crawl_is_an_error_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl import crawl

    # A portal that accepts connections and never answers: each worker is in the middle
    # of its batch's fetch when one of them is killed.
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()[0]) for _ in range(2)],
                     daemon=True).start()
    monkeypatch.setenv("CEC_TIMEOUT", "2")
    monkeypatch.setenv("CEC_RETRIES", "0")
    spec = crawl.SourceSpec(f"http://127.0.0.1:{silent.getsockname()[1]}", tmp_path / "raw")
    pool = crawl._ForkedPool(spec, processes=2, threads=1)
    try:
        pool.submit(0, ["/a"])  # to the first worker
        pool.submit(1, ["/b"])  # to the second
        deadline = time.time() + 30
        while len(accepted) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert len(accepted) == 2
        killed = pool._processes[0]
        assert killed.pid is not None
        os.kill(killed.pid, signal.SIGKILL)
        with pytest.raises(crawl.CrawlWorkerDied, match=f"{killed.pid}.*exit code -9"):
            pool.next_done(timeout=30)
        # The other worker's batch still comes back: a failure (no answer in time).
        batch, outcomes = pool.next_done(timeout=30)
        assert batch == 1 and outcomes[0].failure is not None
    finally:
        pool.shutdown(wait=False)
        silent.close()
    for process in pool._processes:
        process.join(timeout=10)
        assert not process.is_alive()  # the live one saw its pipe close and ended
