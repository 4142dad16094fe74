"""`python -m etl watch`: one warm process, a forked cycle per portal change, against the
replica and a real DuckDB file."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etl_process import etl_env, start_etl

from etl.replica import ReplicaServer
from etl.warehouse.backends import connect

CONTESTS = ("--contest", "list", "--contest", "okrug-3")
CYCLE_LINE = re.compile(r"^cycle (\d+): exit (-?\d+) in [\d.]+s \([\d.]+ CPU-s\)$")
SUMMARY = re.compile(r"^watched \S+: (\d+) polls \((\d+) not modified, (\d+) failed\), (\d+) cycles$")


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer(scenario="kg2021", at="counting-4", port=0) as server:
        yield server


def start_watch(replica: ReplicaServer, data: Path, *args: str) -> subprocess.Popen[str]:
    log = (data.parent / "watch.log").open("w")
    return start_etl("watch", "--portal", replica.base_url, "--election", "jk2021", *CONTESTS,
                     "--interval", "0.2", *args, env=etl_env(data), stdout=subprocess.PIPE,
                     stderr=log)


def cycle_lines(runner: subprocess.Popen[str], until: int, lines: list[str]) -> list[re.Match[str]]:
    """Read the runner's stdout into `lines` until its cycle `until` is reported."""
    assert runner.stdout is not None
    for line in runner.stdout:
        lines.append(line.rstrip("\n"))
        done = CYCLE_LINE.match(lines[-1])
        if done and int(done[1]) == until:
            break
    return [m for m in map(CYCLE_LINE.match, lines) if m]


def test_watch_runs_a_cycle_per_portal_change_with_the_gx_context_built_once_until_stopped(
        replica: ReplicaServer, tmp_path: Path) -> None:
    replica.goto("counting-4")
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    runner = start_watch(replica, tmp_path / "data", "--warehouse", warehouse)
    lines: list[str] = []
    try:
        [first] = cycle_lines(runner, 1, lines)
        assert first[2] == "0", "\n".join(lines)
        time.sleep(1.2)  # ~6 polls of an unchanged portal: no cycle
        replica.goto("counting-5")
        cycles = cycle_lines(runner, 2, lines)
        runner.send_signal(signal.SIGTERM)  # stops between two polls: a summary, exit 0
        # Not communicate(timeout=…): it reads the pipe past what the text wrapper buffered.
        assert runner.stdout is not None
        out = runner.stdout.read()
        runner.wait(timeout=60)
    finally:
        runner.kill()
    lines += out.splitlines()
    assert runner.returncode == 0, "\n".join(lines)
    assert [m[2] for m in cycles] == ["0", "0"]
    # Each cycle printed `etl run`'s summary; the polls in between cost no cycle.
    assert sum("published: 2 contests: list, okrug-3" in line for line in lines) == 2
    [summary] = [m for m in map(SUMMARY.match, lines) if m]
    polls, not_modified, failed, count = map(int, summary.groups())
    assert count == 2 and failed == 0 and not_modified >= 3 and polls >= count + not_modified
    with connect(warehouse) as db:
        assert db.query("SELECT count(*) FROM snapshots") == [(2,)]
    log = (tmp_path / "watch.log").read_text()
    # Both cycles ran Great Expectations on changed frames, with the context the runner
    # built once before its first poll.
    assert len(re.findall(r"[1-9]\d* validated by GX", log)) == 2, log[-3000:]
    assert log.count("GX ephemeral context with") == 1
    assert log.index("GX ephemeral context with") < log.index("portal changed")


def test_watch_tries_a_failed_cycle_again_without_a_portal_change(
        replica: ReplicaServer, tmp_path: Path) -> None:
    replica.goto("counting-4")
    not_a_directory = tmp_path / "raw-archive-file"
    not_a_directory.write_text("a file where the raw archive should be")
    runner = start_watch(replica, tmp_path / "data", "--raw-dir", str(not_a_directory),
                         "--warehouse", f"duckdb:///{tmp_path}/warehouse.duckdb", "--cycles", "2")
    out, _ = runner.communicate(timeout=120)
    lines = out.splitlines()
    # The archive cannot be written: each cycle exits 1 at detection, publishes nothing, and
    # the runner tries again (the portal did not change in between), then exits 1.
    assert [m[2] for m in map(CYCLE_LINE.match, lines) if m] == ["1", "1"], out
    assert runner.returncode == 1
    assert not (tmp_path / "warehouse.duckdb").exists()
    assert "raw-archive-file" in (tmp_path / "watch.log").read_text()
