"""`python -m etl watch`: one warm process, a forked cycle per portal change, against the
replica and a real DuckDB file."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etl_process import etl_env, start_etl

from etl.replica import ReplicaServer
from etl.runner import MAX_RETRY_PAUSE_S, retry_pause, watch_and_run
from etl.warehouse.backends import connect

CONTESTS = ("--contest", "list", "--contest", "okrug-3")
CYCLE_LINE = re.compile(r"^cycle (\d+): exit (-?\d+) in [\d.]+s \([\d.]+ CPU-s\)$", re.MULTILINE)
SUMMARY = re.compile(r"^watched \S+: (\d+) polls \((\d+) not modified, (\d+) failed\), (\d+) cycles$",
                     re.MULTILINE)


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer(scenario="kg2021", at="counting-4", port=0) as server:
        yield server


def start_watch(replica: ReplicaServer, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """`etl watch` with its stdout in tmp_path/watch.out and its log in tmp_path/watch.log."""
    with (tmp_path / "watch.out").open("w") as out, (tmp_path / "watch.log").open("w") as log:
        return start_etl("watch", "--portal", replica.base_url, "--election", "jk2021",
                         *CONTESTS, "--interval", "0.2", *args, env=etl_env(tmp_path / "data"),
                         stdout=out, stderr=log, start_new_session=True)


def wait_for(path: Path, pattern: str, count: int = 1, timeout: float = 120) -> str:
    """The file's text once `pattern` occurs `count` times in it (AssertionError after
    `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if len(re.findall(pattern, text, re.MULTILINE)) >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} ×{count} not in {path} within {timeout}s:\n{text[-3000:]}")


def test_watch_runs_a_cycle_per_change_with_the_gx_context_built_once_and_stops_after_it(
        replica: ReplicaServer, tmp_path: Path) -> None:
    replica.goto("counting-4")
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    runner = start_watch(replica, tmp_path, "--warehouse", warehouse)
    try:
        wait_for(tmp_path / "watch.out", r"^cycle 1: exit 0 ")
        time.sleep(1.2)  # ~6 polls of an unchanged portal: no cycle
        replica.goto("counting-5")
        # Ctrl-C (SIGINT to the whole process group) while cycle 2 runs: the cycle ignores
        # it, the runner lets the cycle end, then stops.
        wait_for(tmp_path / "watch.log", r"portal changed \(fingerprint", count=2)
        os.killpg(runner.pid, signal.SIGINT)
        assert runner.wait(timeout=120) == 0
    finally:
        runner.kill()
    out = (tmp_path / "watch.out").read_text()
    assert [m[2] for m in CYCLE_LINE.finditer(out)] == ["0", "0"], out
    # Each cycle printed `etl run`'s summary; the polls in between cost no cycle.
    assert out.count("published: 2 contests: list, okrug-3") == 2
    [summary] = SUMMARY.findall(out)
    polls, not_modified, failed, count = map(int, summary)
    assert count == 2 and failed == 0 and not_modified >= 3 and polls >= count + not_modified
    with connect(warehouse) as db:
        assert db.query("SELECT count(*) FROM snapshots") == [(2,)]
    log = (tmp_path / "watch.log").read_text()
    # Both cycles ran Great Expectations on changed frames, with the context the runner
    # built once before its first poll.
    assert len(re.findall(r"[1-9]\d* validated by GX", log)) == 2, log[-3000:]
    assert log.count("GX ephemeral context with") == 1
    assert log.index("GX ephemeral context with") < log.index("portal changed")
    # Between the cycles the runner checkpointed the raw archive's index, so the second
    # cycle's change detection did not read the first one's index lines first.
    second = log.index("portal changed", log.index("portal changed") + 1)
    assert re.search(r"raw archive index at \S+ checkpointed",
                     log[log.index("cycle 1: exit 0"):second]), log[-3000:]
    assert "stopped by a signal" in log


def test_watch_tries_a_failed_cycle_again_without_a_portal_change(
        replica: ReplicaServer, tmp_path: Path) -> None:
    replica.goto("counting-4")
    not_a_directory = tmp_path / "raw-archive-file"
    not_a_directory.write_text("a file where the raw archive should be")
    runner = start_watch(replica, tmp_path, "--raw-dir", str(not_a_directory),
                         "--warehouse", f"duckdb:///{tmp_path}/warehouse.duckdb", "--cycles", "2")
    try:
        code = runner.wait(timeout=120)
    finally:
        runner.kill()
    out = (tmp_path / "watch.out").read_text()
    # The archive cannot be written: each cycle exits 1 at detection, publishes nothing, and
    # the runner tries again (the portal did not change in between), then exits 1.
    assert [m[2] for m in CYCLE_LINE.finditer(out)] == ["1", "1"], out
    assert code == 1
    assert not (tmp_path / "warehouse.duckdb").exists()
    assert "raw-archive-file" in (tmp_path / "watch.log").read_text()


def test_a_cycle_killed_by_a_signal_is_tried_again(replica: ReplicaServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """In this process, with a cycle that kills itself the first time (as the OOM killer
    would) and the runner's warm-up left out: the retry is the runner's, not the cycle's."""
    calls = tmp_path / "calls"

    def cycle() -> int:
        with calls.open("a") as file:
            file.write("x")
        if calls.read_text() == "x":
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    args = argparse.Namespace(portal=replica.base_url, lang=None, election="jk2021",
                              interval=0.1, cycles=2, raw_dir=tmp_path / "raw")
    assert watch_and_run(args, cycle, warm=lambda: 0.0) == 0
    out = capsys.readouterr().out
    assert [m[2] for m in CYCLE_LINE.finditer(out)] == [f"-{signal.SIGKILL.value}", "0"], out
    assert calls.read_text() == "xx"
    # The handlers the runner set for SIGINT/SIGTERM are put back.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_pause_before_a_retry_doubles_up_to_a_minute() -> None:
    assert [retry_pause(0.5, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_pause(5.0, 5) == MAX_RETRY_PAUSE_S == 60.0
    assert retry_pause(5.0, 5_000) == MAX_RETRY_PAUSE_S  # a night of failures: no overflow
