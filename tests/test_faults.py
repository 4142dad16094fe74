"""Faults at every stage (issue 10): each ends with nothing lost and exactly one publication.

Real parts only: `python -m etl run` subprocesses against the replica over HTTP, DuckDB
files and the machine's PostgreSQL, SIGKILL from outside (the test watches the stage's
log line or staged files; nothing in `etl/` knows about tests), Airflow's DagBag.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from etl_process import etl_env, run_etl, start_etl

from etl.replica import ReplicaServer
from etl.replica.process import free_port
from etl.warehouse.backends import connect

REPO = Path(__file__).resolve().parent.parent
CONTEST = "okrug-32"  # small, and quarantined at "duplicate-candidate": an alert to lose
LABEL = "duplicate-candidate"
DEADLINE = 300.0


def run_args(portal: str, warehouse: str) -> list[str]:
    return ["run", "--portal", portal, "--election", "jk2021", "--warehouse", warehouse,
            "--contest", CONTEST, "--processes", "1"]


def run_env(data: Path, **extra: str) -> dict[str, str]:
    return etl_env(data, inherit_cec=False, CEC_RETRIES="0", CEC_TIMEOUT="5", **extra)


def etl_run(portal: str, warehouse: str, data: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return run_etl(*run_args(portal, warehouse), env=run_env(data, **extra), timeout=DEADLINE)


class RunningCycle:
    """A `python -m etl run` in the background, its stderr in a file the test can watch."""

    def __init__(self, portal: str, warehouse: str, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.log = data.parent / f"{data.name}-run-{time.monotonic_ns()}.log"
        self._out = self.log.open("w")
        self.process = start_etl(*run_args(portal, warehouse), env=run_env(data),
                                 stdout=self._out, stderr=subprocess.STDOUT)

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not ready():
            if self.process.poll() is not None:
                raise AssertionError(f"the cycle ended ({self.process.returncode}) before "
                                     f"{what}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {DEADLINE}s")
            time.sleep(0.01)

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self) -> int:
        code = self.process.wait(timeout=DEADLINE)
        self._out.close()
        return code


def rows(warehouse: str, sql: str) -> list[tuple[Any, ...]]:
    with connect(warehouse) as db:
        return db.query(sql)


def alerts(data: Path) -> list[dict[str, Any]]:
    path = data / "alerts.jsonl"
    return [json.loads(line) for line in path.open()] if path.exists() else []


def warehouse_state(warehouse: str) -> dict[str, Any]:
    """What a data team sees: snapshots, statuses and row counts (one publication each)."""
    return {
        "snapshots": rows(warehouse, "SELECT snapshot_id FROM snapshots ORDER BY 1"),
        "contests": rows(warehouse, "SELECT snapshot_id, contest_id, status FROM "
                                    "snapshot_contests ORDER BY 1, 2"),
        "results": rows(warehouse, "SELECT snapshot_id, count(*) FROM results GROUP BY 1"),
        "dq": rows(warehouse, "SELECT snapshot_id, count(*) FROM dq_results GROUP BY 1"),
    }


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer(scenario="kg2021", at=LABEL, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def reference(replica: ReplicaServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One undisturbed cycle: what every faulted pair of runs must end with."""
    root = tmp_path_factory.mktemp("reference")
    warehouse = f"duckdb:///{root}/warehouse.duckdb"
    run = etl_run(replica.base_url, warehouse, root / "data")
    assert run.returncode == 3, run.stdout + run.stderr  # okrug-32 quarantined
    state = warehouse_state(warehouse)
    assert len(state["snapshots"]) == 1
    return {"warehouse": state, "alerts": [(a["kind"], a["contest_id"]) for a in
                                           alerts(root / "data")]}


def _staged(data: Path, pattern: str) -> Callable[[], bool]:
    root = data / "staging" / "jk2021"
    return lambda: any(not p.name.endswith(".tmp") for p in root.glob(pattern))


# Where each stage starts, as seen from outside: its first log line or staged file.
STAGES: dict[str, Callable[[RunningCycle, Path], Callable[[], bool]]] = {
    "crawl": lambda cycle, data: lambda: cycle.logged("portal changed"),
    "assemble": lambda cycle, data: _staged(data, "runs/*/batch-0*"),
    "validate": lambda cycle, data: _staged(data, "snapshots/*/snapshot.json"),
    "load": lambda cycle, data: _staged(data, "snapshots/*/dq_results.parquet"),
    "alert": lambda cycle, data: lambda: cycle.logged("loaded into"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_in_a_stage_then_the_next_run_completes_it(
    stage: str, replica: ReplicaServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    cycle = RunningCycle(replica.base_url, warehouse, data)
    cycle.wait_for(STAGES[stage](cycle, data), f"the {stage} stage")
    assert cycle.kill() == -signal.SIGKILL

    after = etl_run(replica.base_url, warehouse, data)
    assert after.returncode == 3, after.stdout + after.stderr
    assert warehouse_state(warehouse) == reference["warehouse"]
    assert [(a["kind"], a["contest_id"]) for a in alerts(data)] == reference["alerts"]
    # And the cycle is now complete: the next run has nothing to do.
    again = etl_run(replica.base_url, warehouse, data)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert warehouse_state(warehouse) == reference["warehouse"]


# A cycle that took the lock and forked a child (as it forks its crawl), then died without
# unlocking (as on SIGKILL) while the child lives on.
LOCK_HOLDER = """
import os, time
from etl import cycle
with cycle.cycle_lock("jk2021"):
    if os.fork() == 0:
        time.sleep(20)
        os._exit(0)
    os._exit(0)
"""


def test_the_cycle_lock_dies_with_its_cycle_not_with_the_cycles_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from etl import cycle

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-c", LOCK_HOLDER], env=run_env(data), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=DEADLINE)
    monkeypatch.setenv("CEC_DATA_DIR", str(data))
    with cycle.cycle_lock("jk2021") as path:  # not CycleBusyError: the holder is gone
        assert path.read_text().startswith(f"pid {os.getpid()} ")


def test_a_cycle_killed_in_its_crawl_leaves_no_process_behind(
    replica: ReplicaServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    import psutil

    data = tmp_path / "data"
    data.mkdir()
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    args = [*run_args(replica.base_url, warehouse)[:-1], "2"]  # two crawl worker processes
    with (tmp_path / "run.log").open("w") as log:
        running = start_etl(*args, env=run_env(data), stdout=log, stderr=subprocess.STDOUT)
    parent = psutil.Process(running.pid)

    def crawling() -> list[psutil.Process]:
        # The crawl's child and its two workers, once they have all forked.
        with contextlib.suppress(psutil.Error):
            family = parent.children(recursive=True)
            if len(family) >= 3:
                return family
        return []

    deadline = time.monotonic() + DEADLINE
    while not (family := crawling()):
        assert running.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the crawl's processes never all started"
        time.sleep(0.005)
    running.send_signal(signal.SIGKILL)
    assert running.wait(timeout=DEADLINE) == -signal.SIGKILL
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [(p.pid, p.status()) for p in alive]
    after = etl_run(replica.base_url, warehouse, data)
    assert after.returncode == 3, after.stdout + after.stderr
    assert warehouse_state(warehouse) == reference["warehouse"]


def test_two_cycles_of_one_election_at_once(
    replica: ReplicaServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    first = RunningCycle(replica.base_url, warehouse, data)
    first.wait_for(lambda: first.logged("portal changed"), "the first cycle's crawl")
    second = etl_run(replica.base_url, warehouse, data)
    assert second.returncode == 4, second.stdout + second.stderr
    assert "another cycle of jk2021 is running" in second.stderr
    assert f"pid {first.process.pid}" in second.stderr
    assert first.finish() == 3
    assert warehouse_state(warehouse) == reference["warehouse"]
    assert [(a["kind"], a["contest_id"]) for a in alerts(data)] == reference["alerts"]


class TcpProxy:
    """A loopback TCP forwarder to PostgreSQL that the test can take down: the warehouse
    going away mid-cycle, with the real server and the real driver on both sides."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.open: list[socket.socket] = []
        self.up = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.up:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=10)
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        self.up = False
        # shutdown() first: close() alone does not wake a thread blocked in accept(), and
        # the socket would keep listening until it returns.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for connection in self.open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
        self.thread.join(timeout=10)


def test_warehouse_down_at_publish_keeps_the_snapshot_staged_for_the_next_run(
    replica: ReplicaServer, reference: dict[str, Any], tmp_path: Path,
    postgres_database_url: str,
) -> None:
    from snapshot_factory import postgres_schema_url

    data = tmp_path / "data"
    warehouse = postgres_schema_url(postgres_database_url)
    parts = urlsplit(warehouse)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    user = f"{parts.username}@" if parts.username else ""
    through_proxy = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    cycle = RunningCycle(replica.base_url, through_proxy, data)
    # Validation read the previous snapshot through the proxy; once its results are
    # written the process is paused, the warehouse goes away, and publishing meets it down.
    cycle.wait_for(_staged(data, "snapshots/*/dq_results.parquet"), "the validated snapshot")
    cycle.process.send_signal(signal.SIGSTOP)
    proxy.down()
    cycle.process.send_signal(signal.SIGCONT)
    assert cycle.finish() == 1, cycle.log.read_text()[-3000:]
    assert "the cycle failed" in cycle.log.read_text()
    [staged] = list((data / "staging" / "jk2021" / "snapshots").glob("jk2021-*"))
    assert (staged / "dq_results.parquet").exists()
    assert [a["kind"] for a in alerts(data)] == ["pipeline_failed"]
    loaded = rows(warehouse, "SELECT count(*) FROM information_schema.tables WHERE table_name "
                             "= 'snapshots' AND table_schema = current_schema()")
    if loaded == [(1,)]:  # migrated during validation: nothing may be half-loaded
        assert rows(warehouse, "SELECT count(*) FROM snapshots") == [(0,)]

    published = etl_run(replica.base_url, warehouse, data)
    assert published.returncode == 3, published.stdout + published.stderr
    state = warehouse_state(warehouse)
    assert state["snapshots"] == [(staged.name,)] == reference["warehouse"]["snapshots"]
    assert state["results"] == reference["warehouse"]["results"]
    assert [a["kind"] for a in alerts(data)] == ["pipeline_failed", "quarantined", "resolved"]


def test_portal_down_for_n_runs_alerts_once_then_recovers(
    replica: ReplicaServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    dead = f"http://127.0.0.1:{free_port()}"
    codes = [etl_run(dead, warehouse, data, CEC_ALERT_AFTER_FAILED_RUNS="2").returncode
             for _ in range(4)]
    assert codes == [1, 1, 1, 1]
    assert [a["kind"] for a in alerts(data)] == ["pipeline_failed"]  # once per streak
    assert not (tmp_path / "warehouse.duckdb").exists()  # no publication

    back = etl_run(replica.base_url, warehouse, data, CEC_ALERT_AFTER_FAILED_RUNS="2")
    assert back.returncode == 3, back.stdout + back.stderr
    assert warehouse_state(warehouse) == reference["warehouse"]
    assert [a["kind"] for a in alerts(data)] == ["pipeline_failed", "quarantined", "resolved"]


def test_a_portal_clock_going_backwards_never_becomes_latest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    with ReplicaServer(scenario="kg2021", at="counting-4", port=0) as portal:
        assert etl_run(portal.base_url, warehouse, data).returncode == 0
        [(newer,)] = rows(warehouse, "SELECT snapshot_id FROM snapshots")
        portal.goto("counting-3")  # an older `updated` time, other figures
        older = etl_run(portal.base_url, warehouse, data)
    assert older.returncode == 0, older.stdout + older.stderr
    assert "portal clock went backwards" in older.stdout
    assert len(rows(warehouse, "SELECT snapshot_id FROM snapshots")) == 2
    assert rows(warehouse, "SELECT DISTINCT snapshot_id FROM latest_results") == [(newer,)]
    assert rows(warehouse, "SELECT DISTINCT snapshot_id FROM latest_turnout") == [(newer,)]
    [cycle_log] = [json.loads(line) for line in (data / "cycles.jsonl").open()][-1:]
    assert "backwards" in cycle_log["clock_warning"]


def test_one_broken_election_file_fails_only_its_own_dag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    elections = tmp_path / "elections"
    elections.mkdir()
    shutil.copy(REPO / "elections" / "jk2021.toml", elections / "jk2021.toml")
    other = (REPO / "elections" / "jk2021.toml").read_text(encoding="utf-8")
    (elections / "jk2026.toml").write_text(
        other.replace('election_id = "jk2021"', 'election_id = "jk2026"'), encoding="utf-8")
    (elections / "broken.toml").write_text('election_id = "broken"\n[contests\n',
                                           encoding="utf-8")
    monkeypatch.setenv("CEC_ELECTIONS_DIR", str(elections))

    dagbag = DagBag(dag_folder=str(REPO / "dags"))
    assert {"cec_results__jk2021", "cec_results__jk2026", "cec_reprocess",
            "cec_example_consumer__jk2021"} == set(dagbag.dag_ids)
    [(where, error)] = dagbag.import_errors.items()
    assert where.endswith("cec_results.py")
    assert "broken.toml" in error and "not valid TOML" in error
