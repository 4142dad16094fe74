"""`make cluster` for real: a DAG run on the CeleryExecutor survives a worker's death.

The cluster (deploy/cluster.py: PostgreSQL metadata DB, Redis broker, api-server, scheduler,
dag-processor, triggerer, two Celery workers of one slot each) runs `cec_results__jk2021`
against the replica in this process, serving the `formula-error` snapshot (the party list
is quarantined and alerted, the 36 constituencies are published). While both workers crawl,
worker-1 and every process under it are SIGKILLed, as when a machine is lost: the scheduler
notices the missing heartbeats, the crawl is retried on worker-2, and the run must succeed
with one publication, one alert and no duplicate row. About 5-7 minutes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deploy.cluster import (
    DEFAULT_POSTGRES,
    free_port,
    process_tree,
    read_env_file,
    running_process,
)
from etl.elections import parse_election_file
from etl.replica.server import ReplicaServer

REPO = Path(__file__).resolve().parent.parent
ELECTION = "jk2021"
DAG_ID = f"cec_results__{ELECTION}"
SNAPSHOT = "formula-error"
# Seconds the replica adds to every answer: each crawl task lasts long enough to be killed
# in the middle, without making the run slow.
PAGE_LATENCY = 0.02
RUN_DEADLINE = 600.0
T = TypeVar("T")


@dataclass
class Cluster:
    state_dir: Path
    api_port: int
    metadata_url: str
    warehouse_url: str
    data_dir: Path
    record: dict[str, Any]

    def worker(self, name: str) -> dict[str, Any]:
        return next(c for c in self.record["components"] if c["name"] == name)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """`probe()` once it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def election_without_schedule(target_dir: Path) -> None:
    """jk2021.toml without its [schedule]: the DAG runs only when the test triggers it."""
    source = REPO / "elections" / f"{ELECTION}.toml"
    text, count = re.subn(r"^\[schedule\]\n(?:(?!\[).*\n)*", "", source.read_text("utf-8"),
                          flags=re.M)
    assert count == 1
    target_dir.mkdir(parents=True)
    (target_dir / source.name).write_text(text, encoding="utf-8")
    assert parse_election_file(target_dir / source.name).schedule is None


def empty_redis_db() -> int:
    """A Redis database number with no keys (the broker of this test's cluster alone)."""
    import redis

    numbers = list(range(1, 16))
    random.shuffle(numbers)
    for number in numbers:
        if number != 5 and redis.Redis(db=number, socket_timeout=5).dbsize() == 0:
            return number
    raise RuntimeError("no empty Redis database for the test broker")


def cluster_cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cluster", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer(at=SNAPSHOT) as server:
        server.set_faults(latency=PAGE_LATENCY)
        yield server


@pytest.fixture(scope="module")
def cluster(replica: ReplicaServer) -> Iterator[Cluster]:
    """`python -m deploy.cluster start` as `make cluster` runs it; always stopped afterwards."""
    import psycopg
    import redis
    from snapshot_factory import postgres_database

    # Not pytest's tmp_path: other pytest sessions on this machine prune old base temp
    # directories, and the cluster's pid files must outlive a long test.
    root = Path(tempfile.mkdtemp(prefix="cec-cluster-test-"))
    election_without_schedule(root / "elections")
    state_dir, data_dir = root / "state", root / "data"
    metadata_db = f"cec_airflow_test_{uuid.uuid4().hex[:10]}"
    redis_db = empty_redis_db()
    api_port = free_port()
    with postgres_database() as warehouse_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CEC_", "AIRFLOW"))}
        env.update({
            "PYTHONPATH": str(REPO),
            "CEC_PORTAL_URL": replica.base_url,
            "CEC_ELECTIONS_DIR": str(root / "elections"),
            "CEC_DATA_DIR": str(data_dir),  # one directory both workers use
            "CEC_WAREHOUSE_URL": warehouse_url,
            "CEC_CRAWL_BATCHES": "4",  # mapped crawl tasks: more than the two workers
            "CEC_CRAWL_PROCESSES": "1",
            "CEC_CONCURRENCY": "4",
        })
        started = None
        try:
            started = cluster_cli(
                "start", "--state-dir", str(state_dir), "--api-port", str(api_port),
                "--metadata-db", metadata_db, "--redis-db", str(redis_db),
                "--worker-concurrency", "1", "--deadline", "420",
                # A killed worker's task is retried after 30 s without a heartbeat, not 60:
                # the test waits half as long; heartbeats come every few seconds even here.
                "--heartbeat-timeout", "30", env=env, timeout=1200)
            assert started.returncode == 0, f"make cluster failed:\n{started.stderr[-4000:]}"
            record = json.loads((state_dir / "cluster.json").read_text(encoding="utf-8"))
            yield Cluster(state_dir, api_port,
                          f"{DEFAULT_POSTGRES.rsplit('/', 1)[0]}/{metadata_db}", warehouse_url,
                          data_dir, record)
        finally:
            stopped = cluster_cli("stop", "--state-dir", str(state_dir), env=env, timeout=300)
            leftovers = list((state_dir / "pids").glob("*.pid"))
            redis.Redis(db=redis_db, socket_timeout=5).flushdb()
            with psycopg.connect(DEFAULT_POSTGRES, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{metadata_db}" WITH (FORCE)')
            if not leftovers:
                shutil.rmtree(root, ignore_errors=True)
            assert stopped.returncode == 0 and not leftovers, stopped.stderr[-2000:]


def api(cluster: Cluster, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A call to the cluster's REST API (the local cluster needs no login)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.api_port}/api/v2{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def metadata(cluster: Cluster, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(cluster.metadata_url, connect_timeout=10) as connection:
        return list(connection.execute(sql, params).fetchall())


def warehouse(cluster: Cluster, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(cluster.warehouse_url, connect_timeout=10) as connection:
        return list(connection.execute(sql).fetchall())


def crawl_tries(cluster: Cluster, run_id: str) -> list[tuple[int, int, str | None, str | None]]:
    """(map_index, try_number, state, hostname) of every try of the crawl tasks so far."""
    query = ("SELECT map_index, try_number, state, hostname FROM {table} "
             "WHERE dag_id = %s AND run_id = %s AND task_id = 'crawl'")
    return sorted(metadata(cluster, query.format(table="task_instance"), DAG_ID, run_id)
                  + metadata(cluster, query.format(table="task_instance_history"), DAG_ID, run_id))


def kill_like_a_lost_machine(cluster: Cluster, name: str) -> int:
    """SIGKILL the worker and every process under it (pool, task supervisors, tasks) at once."""
    process = running_process(cluster.state_dir / "pids" / f"{name}.pid")
    assert process is not None, f"{name} is not running"
    tree = process_tree(process)
    for member in tree:
        os.kill(member.pid, signal.SIGKILL)
    return len(tree)


@pytest.mark.airflow
@pytest.mark.postgres
@pytest.mark.timeout(1800)  # start-up, the run and the stop, each under its own deadline
def test_a_run_survives_a_worker_killed_in_the_middle_of_a_crawl(cluster: Cluster) -> None:
    host_1 = cluster.worker("worker-1")["hostname"]
    host_2 = cluster.worker("worker-2")["hostname"]
    assert host_1 and host_2 and host_1 != host_2

    wait_for(f"the dag-processor to parse {DAG_ID}",
             lambda: metadata(cluster, "SELECT dag_id FROM dag WHERE dag_id = %s AND NOT is_paused",
                              DAG_ID), timeout=240, every=1)
    run_id = api(cluster, "POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]

    # Both one-slot workers take a crawl batch: the mapped tasks spread over the cluster.
    def both_crawling() -> list[tuple[int, int, str | None, str | None]] | None:
        tries = crawl_tries(cluster, run_id)
        running = {host for _, _, state, host in tries if state == "running"}
        return tries if {host_1, host_2} <= running else None

    tries = wait_for("crawl tasks running on both workers", both_crawling, timeout=300, every=0.5)
    killed_index = next(i for i, _, state, host in tries if state == "running" and host == host_1)
    assert kill_like_a_lost_machine(cluster, "worker-1") >= 3  # worker, pool child, task
    state_at_kill = [s for i, _, s, h in crawl_tries(cluster, run_id) if i == killed_index and
                     h == host_1]
    assert state_at_kill == ["running"], "the crawl on worker-1 had ended before the kill"

    final = wait_for(
        "the DAG run to end",
        lambda: [s for (s,) in metadata(cluster, "SELECT state FROM dag_run WHERE dag_id = %s "
                                                 "AND run_id = %s", DAG_ID, run_id)
                 if s in ("success", "failed")],
        timeout=RUN_DEADLINE, every=1)
    tasks = metadata(cluster, "SELECT task_id, map_index, try_number, state, hostname "
                              "FROM task_instance WHERE dag_id = %s AND run_id = %s "
                              "ORDER BY task_id, map_index", DAG_ID, run_id)
    assert final == ["success"], tasks

    # The killed try failed on worker-1 (heartbeat timeout); the next one ran on worker-2.
    tries = crawl_tries(cluster, run_id)
    killed = [t for t in tries if t[0] == killed_index]
    assert (killed_index, 1, "failed", host_1) in killed, killed
    assert killed[-1][1:] == (2, "success", host_2), killed
    assert all(state == "success" for i, n, state, _ in tries if (i, n) != (killed_index, 1))
    # Every task instance recorded the hostname of its worker (hostname_callable).
    assert {host for *_, host in tasks} <= {host_1, host_2}
    assert {host for *_, host in tries} == {host_1, host_2}

    # Published once: one try of publish, one snapshot, no duplicate row.
    by_task = {(t[0], t[1]): t for t in tasks}
    assert by_task[("publish", -1)][2:4] == (1, "success")
    assert by_task[("announce", -1)][3] == "success"
    snapshots = warehouse(cluster, "SELECT snapshot_id FROM snapshots")
    assert len(snapshots) == 1
    snapshot_id = snapshots[0][0]
    import pandas as pd

    staged = pd.read_parquet(cluster.data_dir / "staging" / ELECTION / "snapshots" / snapshot_id
                             / "results.parquet")
    (rows,) = warehouse(cluster, "SELECT count(*) FROM results")
    assert rows[0] == len(staged) > 0
    (latest,) = warehouse(cluster, "SELECT count(*), count(DISTINCT (contest_id, division_id, "
                                   "line_no)), count(DISTINCT contest_id) FROM latest_results")
    assert latest[0] == latest[1] > 0 and latest[2] == 36  # the party list is quarantined
    statuses = dict(warehouse(cluster, "SELECT contest_id, status FROM snapshot_contests"))
    assert statuses["list"] == "quarantined"
    assert {s for c, s in statuses.items() if c != "list"} == {"published"}

    # One cycle logged, one alert: the quarantine of the party list.
    cycles = (cluster.data_dir / "cycles.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(cycles) == 1 and json.loads(cycles[0])["snapshot_id"] == snapshot_id
    alerts = [json.loads(line) for line in
              (cluster.data_dir / "alerts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(a["kind"], a["contest_id"]) for a in alerts] == [("quarantined", "list")]


def test_docker_compose_uses_the_settings_of_make_cluster() -> None:
    """The compose sketch reads deploy/cluster.env and runs the same components."""
    import yaml

    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    airflow = {name: s for name, s in services.items() if "command" in s and
               s.get("env_file") == ["cluster.env"]}
    commands = {s["command"] for s in airflow.values()}
    assert {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"} <= commands
    shared = read_env_file(REPO / "deploy" / "cluster.env")
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for service in airflow.values():
        # What cluster.env settles is not overridden per service.
        assert not set(service.get("environment", {})) & set(shared)
    init = " ".join(str(services["airflow-init"]["command"]).split())
    assert "airflow pools set cec_warehouse 1" in init


def test_the_cluster_environment_keeps_its_airflow_settings_and_lets_cec_defaults_yield(
        tmp_path: Path) -> None:
    from deploy.cluster import ClusterSettings, cluster_env

    settings = ClusterSettings(state_dir=tmp_path / "state", api_port=18080, redis_db=7)
    env = cluster_env(settings, {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                                 "CEC_CRAWL_BATCHES": "8", "CEC_HOSTNAME": "stray"})
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["CEC_CRAWL_BATCHES"] == "8"
    assert cluster_env(settings, {})["CEC_CRAWL_BATCHES"] == read_env_file(
        REPO / "deploy" / "cluster.env")["CEC_CRAWL_BATCHES"]
    assert "CEC_HOSTNAME" not in env  # set per worker only
    timeout = "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"
    assert env[timeout] == read_env_file(REPO / "deploy" / "cluster.env")[timeout]
    quicker = ClusterSettings(state_dir=tmp_path / "state", heartbeat_timeout=30)
    assert cluster_env(quicker, {})[timeout] == "30"
    assert env["CEC_DATA_DIR"] == str((tmp_path / "state" / "data").resolve())
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/7"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"


def test_the_hostname_callable_reads_cec_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from deploy.hostname import node_hostname

    monkeypatch.setenv("CEC_HOSTNAME", "box-worker-2")
    assert node_hostname() == "box-worker-2"
    monkeypatch.delenv("CEC_HOSTNAME")
    assert node_hostname() == socket.getfqdn()
