"""The quality gate's suites spread over processes (`etl.quality.gate._check_all`).

Once the crawl is over a cycle runs on one core: the gate forks helpers that take suites
from a shared counter. These tests drive the scheduler with plain functions in real
forked processes; `test_quality_replica.py` checks that the gate's answer does not change.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from etl import config
from etl.forked import ForkedTask
from etl.quality.gate import SuiteFindings, _check_all
from etl.quality.memo import GateMemo, MemoPart
from etl.quality.suites import EXPECTATIONS_DIR, RuleOutcome, SuiteRunner

SUITES = [f"suite-{i}" for i in range(8)]


def makers() -> list[tuple[str, object]]:
    return [(suite, None) for suite in SUITES]


def by_pid(suite: str, _make: object) -> SuiteFindings:
    time.sleep(0.05)  # long enough that the helper, once forked, takes some
    return SuiteFindings({(suite, str(os.getpid())): 1}, [])


def test_every_suite_is_checked_once_and_comes_back_in_order() -> None:
    findings, spread = _check_all(makers(), by_pid, 2, None)  # type: ignore[arg-type]
    assert [next(iter(f.checked))[0] for f in findings] == SUITES
    pids = {next(iter(f.checked))[1] for f in findings}
    assert str(os.getpid()) in pids and len(pids) == 2  # the parent and its helper
    assert spread is not None and spread[0] == 2
    assert spread[1] == sum(next(iter(f.checked))[1] != str(os.getpid()) for f in findings)


def test_one_process_checks_them_in_turn_without_forking() -> None:
    findings, spread = _check_all(makers(), by_pid, 1, None)  # type: ignore[arg-type]
    assert {next(iter(f.checked))[1] for f in findings} == {str(os.getpid())}
    assert spread is None


def test_what_the_helper_remembered_reaches_the_parents_memo(tmp_path: Path) -> None:
    memo = GateMemo(tmp_path / "memo.json")
    parent = os.getpid()

    def remembering(suite: str, _make: object) -> SuiteFindings:
        time.sleep(0.05)
        memo.put(suite, f"key-of-{suite}", [RuleOutcome(suite, "C1", "rule", "critical",
                                                         (os.getpid(),), {})])
        if os.getpid() == parent:
            memo.hits += 1
        else:
            memo.misses += 1
        return SuiteFindings({}, [])

    _, spread = _check_all(makers(), remembering, 2, memo)  # type: ignore[arg-type]
    assert spread is not None
    part = memo.taken()
    assert sorted(part.used) == SUITES  # the helper's suites too
    pids = {part.used[s][f"key-of-{s}"][0]["failing_rows"][0] for s in SUITES}
    assert os.getpid() in pids and len(pids) == 2
    assert (part.hits, part.misses) == (len(SUITES) - spread[1], spread[1])
    assert isinstance(part, MemoPart)


def test_a_failure_in_the_helper_is_raised_in_the_gate() -> None:
    parent = os.getpid()

    def failing_elsewhere(suite: str, make: object) -> SuiteFindings:
        if os.getpid() != parent:
            raise ValueError(f"{suite} broke in the helper")
        return by_pid(suite, make)

    with pytest.raises(ValueError, match="broke in the helper") as raised:
        _check_all(makers(), failing_elsewhere, 2, None)  # type: ignore[arg-type]
    assert any("raised in the quality gate process" in note for note in raised.value.__notes__)


def test_when_the_gate_fails_its_helpers_are_stopped() -> None:
    parent = os.getpid()

    def failing_here(suite: str, _make: object) -> SuiteFindings:
        if os.getpid() == parent:
            raise ValueError("the parent's suite broke")
        time.sleep(60)  # the helper would go on for a minute
        return SuiteFindings({}, [])

    started = time.monotonic()
    with pytest.raises(ValueError, match="parent's suite broke"):
        _check_all(makers(), failing_here, 2, None)  # type: ignore[arg-type]
    assert time.monotonic() - started < 30
    assert not [child for child in psutil.Process().children() if child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE]


def test_a_helper_killed_half_way_leaves_its_suites_to_the_gate() -> None:
    """The OOM killer takes the helper: the gate checks what it had taken, no error."""
    parent = os.getpid()

    def killed_in_helper(suite: str, make: object) -> SuiteFindings:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return by_pid(suite, make)

    findings, spread = _check_all(makers(), killed_in_helper, 2, None)  # type: ignore[arg-type]
    assert [next(iter(f.checked)) for f in findings] == [(s, str(parent)) for s in SUITES]
    assert spread == (2, 0)


def test_a_helper_that_hangs_is_given_up_and_its_suites_checked_here() -> None:
    parent = os.getpid()

    def hanging_in_helper(suite: str, make: object) -> SuiteFindings:
        if os.getpid() != parent:
            time.sleep(600)
        return by_pid(suite, make)

    started = time.monotonic()
    findings, spread = _check_all(makers(), hanging_in_helper, 2, None,  # type: ignore[arg-type]
                                  helper_grace=1.0)
    assert time.monotonic() - started < 60
    assert {next(iter(f.checked))[1] for f in findings} == {str(parent)}
    assert spread == (2, 0)
    assert not [child for child in psutil.Process().children() if child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE]


def test_a_suite_runner_lock_held_by_a_thread_at_the_fork_is_free_in_the_child() -> None:
    """A DAG may validate in threads: a helper forked meanwhile must not wait forever on
    a lock that only the other thread, which it does not have, could release."""
    runner = SuiteRunner(EXPECTATIONS_DIR)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with runner._lock:
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        acquired = ForkedTask(lambda: runner._lock.acquire(timeout=5), "lock probe")
        assert acquired.result(timeout=30) is True
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize(("rows", "expected"), [(5_000, 1), (82_120, 2), (1_919_399, 1)])
def test_small_and_very_large_snapshots_are_checked_in_one_process(
    monkeypatch: pytest.MonkeyPatch, rows: int, expected: int
) -> None:
    monkeypatch.setenv("CEC_GATE_PROCESSES", "2")
    assert config.gate_processes(rows) == expected
