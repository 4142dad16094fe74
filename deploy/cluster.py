"""A real Airflow CeleryExecutor cluster on this machine: `make cluster`, `make cluster-stop`.

    python -m deploy.cluster start  [--state-dir data/cluster] [--api-port 8080]
                                    [--workers 2] [--worker-concurrency 2] [--redis-db 5]
                                    [--metadata-db cec_airflow] [--deadline 300]
    python -m deploy.cluster status [--state-dir data/cluster]
    python -m deploy.cluster stop   [--state-dir data/cluster]

`start` runs, each in its own session, with its output in `<state-dir>/logs/<name>.log`
and its pid in `<state-dir>/pids/<name>.pid`: `airflow api-server` (UI and REST API on
127.0.0.1:<api-port>, everyone is admin: bind it to loopback only), `airflow scheduler`,
`airflow dag-processor`, `airflow triggerer` and `--workers` Celery workers
(`airflow celery worker`, node names `worker-<n>@<host>`, each recording its task instances
under the hostname `<host>-worker-<n>`: see deploy/hostname.py). The metadata database is
`--metadata-db` on the PostgreSQL at `--postgres` (created if missing), the Celery broker
is database `--redis-db` of the Redis at `--redis` (one number per cluster: two clusters on
one Redis DB would take each other's tasks), the Celery result backend is the metadata
database. Then it waits, up to `--deadline` seconds, until the api-server's
`/api/v2/monitor/health` reports the metadata DB, scheduler, triggerer and dag-processor
healthy and every worker answers `celery inspect ping`; if not, it stops what it started
and fails with the log tail of the component at fault. `stop` stops exactly the processes
named in the pid files (and their descendants): SIGTERM, then SIGKILL after a deadline.

Airflow settings common to this and deploy/docker-compose.yml are in deploy/cluster.env.
The pipeline's settings (CEC_*) are taken from the environment `start` runs in, except:
CEC_DATA_DIR defaults to `<state-dir>/data` (made absolute: every worker must see the same
directory) and CEC_WAREHOUSE_URL to the PostgreSQL database `cec_warehouse` (created if
missing; DuckDB allows one writing process, a cluster has many). `<state-dir>/cluster.env`
holds the environment (no secrets) for running the `airflow` CLI against the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_SETTINGS = Path(__file__).resolve().parent / "cluster.env"
DEFAULT_STATE_DIR = REPO_ROOT / "data" / "cluster"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
WAREHOUSE_DB = "cec_warehouse"
WAREHOUSE_POOL = ("cec_warehouse", "1", "one warehouse load at a time")
POLL_SECONDS = 3.0


@dataclass(frozen=True)
class ClusterSettings:
    """What `start` builds; every field has a command-line option."""

    state_dir: Path = DEFAULT_STATE_DIR
    api_port: int = 8080
    postgres: str = DEFAULT_POSTGRES  # any database of the server: used to create ours
    metadata_db: str = "cec_airflow"
    redis: str = DEFAULT_REDIS
    redis_db: int = 5
    workers: int = 2
    worker_concurrency: int = 2
    deadline: float = 300.0
    # Seconds without a heartbeat before a task counts as lost and is retried elsewhere;
    # None keeps deploy/cluster.env's (60 s). Shorter finds a dead worker sooner, but a
    # task whose heartbeats are merely late (a very busy machine) is then killed too.
    heartbeat_timeout: int | None = None

    @property
    def metadata_url(self) -> str:
        """SQLAlchemy URL of the metadata DB (psycopg 3, as SQLAlchemy 2.1 maps it anyway)."""
        return database_url(self.postgres, self.metadata_db).replace(
            "postgresql://", "postgresql+psycopg://", 1)

    @property
    def broker_url(self) -> str:
        return f"{self.redis.rstrip('/')}/{self.redis_db}"


@dataclass
class Component:
    """One long-running Airflow process of the cluster."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the cluster's environment
    hostname: str | None = None  # what Airflow records for it (workers only)
    celery_node: str | None = None  # workers only

    def pid_file(self, state_dir: Path) -> Path:
        return state_dir / "pids" / f"{self.name}.pid"

    def log_file(self, state_dir: Path) -> Path:
        return state_dir / "logs" / f"{self.name}.log"


class ClusterError(RuntimeError):
    """The cluster could not be started, checked or stopped; the message says why."""


# -- configuration ----------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (the docker compose `env_file` format); blank lines and # comments skipped."""
    settings: dict[str, str] = {}
    for number, raw_line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ClusterError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        settings[key.strip()] = value.strip()
    return settings


def database_url(server_url: str, name: str) -> str:
    """`server_url` with its database replaced by `name`."""
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


def components(settings: ClusterSettings) -> list[Component]:
    """The processes of the cluster, in start order (stopped in reverse)."""
    host = socket.gethostname()
    started = [
        Component("api-server", ["api-server", "--host", "127.0.0.1",
                                 "--port", str(settings.api_port)]),
        Component("dag-processor", ["dag-processor"]),
        Component("scheduler", ["scheduler"]),
        # Its log server would take the default port 8794: another Airflow here may hold it.
        Component("triggerer", ["triggerer"],
                  {"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}),
    ]
    for number in range(1, settings.workers + 1):
        name = f"worker-{number}"
        started.append(Component(
            name,
            ["celery", "worker", "--celery-hostname", f"{name}@{host}",
             "--concurrency", str(settings.worker_concurrency)],
            # Two workers on one machine: each its own log-server port and its own hostname.
            {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
             "CEC_HOSTNAME": f"{host}-{name}"},
            hostname=f"{host}-{name}", celery_node=f"{name}@{host}"))
    return started


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cluster_secrets(state_dir: Path) -> dict[str, str]:
    """Secrets every component must share; kept (mode 0600) so that a restart keeps them."""
    path = state_dir / "secrets.json"
    if path.exists():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    from cryptography.fernet import Fernet

    values = {
        # The scheduler signs the tokens of task workloads, the api-server checks them.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        # Connections are stored encrypted in the metadata DB with this key.
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(values), encoding="utf-8")
    return values


def cluster_env(settings: ClusterSettings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment (without secrets) every component, task and CLI call runs with."""
    env = dict(os.environ if base is None else base)
    for key, value in read_env_file(SHARED_SETTINGS).items():
        # Airflow settings define the cluster; the pipeline's are defaults the operator's
        # environment may override (e.g. CEC_CRAWL_BATCHES).
        if key.startswith("CEC_"):
            env[key] = env.get(key) or value
        else:
            env[key] = value
    api = f"http://127.0.0.1:{settings.api_port}"
    state = settings.state_dir.resolve()
    data_dir = Path(env.get("CEC_DATA_DIR") or state / "data").resolve()
    env.update({
        "AIRFLOW_HOME": str(state / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.metadata_url,
        "AIRFLOW__CELERY__BROKER_URL": settings.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{settings.metadata_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.api_port),
        "AIRFLOW__API__BASE_URL": api,
        # Celery workers run their tasks through the execution API of the api-server.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        # A local cluster bound to 127.0.0.1: the UI and the REST API need no login.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        # The scheduler's log server (default 8793) would clash with a worker's or another
        # Airflow's on this machine; with the CeleryExecutor it serves nothing anyway.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        # `etl` (the pipeline) and `deploy.hostname` (hostname_callable) from this checkout.
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]),
        "CEC_DATA_DIR": str(data_dir),
        "CEC_WAREHOUSE_URL": env.get("CEC_WAREHOUSE_URL")
                             or database_url(settings.postgres, WAREHOUSE_DB),
    })
    if settings.heartbeat_timeout is not None:
        env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = str(settings.heartbeat_timeout)
    env.pop("AIRFLOW_CONFIG", None)
    env.pop("CEC_HOSTNAME", None)  # set per worker only
    return env


def write_cli_env(path: Path, env: dict[str, str]) -> None:
    """A file to `source` for running the airflow CLI against the cluster (no secrets)."""
    lines = ["# source this file to use the `airflow` CLI against the cluster"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())
              if key.startswith(("AIRFLOW", "CEC_")) or key == "PYTHONPATH"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the services it needs --------------------------------------------------------------


def ensure_database(server_url: str, name: str) -> bool:
    """Create database `name` on the server unless it exists; True if it was created."""
    import psycopg

    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as admin:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            admin.execute(f'CREATE DATABASE "{name}"')
            return True
    except psycopg.OperationalError as error:
        raise ClusterError(f"PostgreSQL at {server_url} is not reachable: {error}") from error


def check_redis(broker_url: str) -> None:
    """Fail with a clear message unless the broker answers PING."""
    import redis

    try:
        redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5).ping()
    except redis.RedisError as error:
        raise ClusterError(f"Redis at {broker_url} is not reachable: {error}") from error


def airflow_cli(env: dict[str, str], *args: str, timeout: float) -> str:
    """Run one `airflow …` command to completion within `timeout` seconds; its stdout."""
    try:
        done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise ClusterError(f"airflow {' '.join(args)} took more than {timeout:.0f} s") from error
    if done.returncode != 0:
        raise ClusterError(f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return done.stdout


# -- processes --------------------------------------------------------------------------


def _record_pid(path: Path, process: subprocess.Popen[bytes]) -> None:
    # The start time guards against a recycled pid: stop never signals a stranger.
    record = {"pid": process.pid, "create_time": psutil.Process(process.pid).create_time()}
    path.write_text(json.dumps(record), encoding="utf-8")


def running_process(pid_file: Path) -> psutil.Process | None:
    """The process a pid file names, if it still runs (same pid *and* start time)."""
    if not pid_file.exists():
        return None
    record = json.loads(pid_file.read_text(encoding="utf-8"))
    try:
        process = psutil.Process(int(record["pid"]))
        if abs(process.create_time() - float(record["create_time"])) > 0.01:
            return None
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return None


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    """The root, its descendants, and what is left of its session (orphans of a dead pool)."""
    tree = {root.pid: root}
    with contextlib.suppress(psutil.NoSuchProcess):
        tree.update({child.pid: child for child in root.children(recursive=True)})
    for candidate in psutil.process_iter(["pid"]):
        try:
            # Each component leads its own session (start_new_session); a task process
            # moves to a group of its own but stays in the session.
            if os.getsid(candidate.pid) == root.pid and candidate.pid not in tree:
                tree[candidate.pid] = candidate
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return list(tree.values())


def kill_trees(roots: list[psutil.Process], *, grace: float) -> None:
    """SIGTERM the roots, wait up to `grace` seconds, then SIGKILL whatever of them remains."""
    members = {p.pid: p for root in roots for p in process_tree(root)}
    if grace > 0:
        for root in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                root.terminate()
        psutil.wait_procs(roots, timeout=grace)
    leftovers = {pid: p for pid, p in members.items() if p.is_running()}
    for root in roots:
        if root.is_running():
            leftovers.update({p.pid: p for p in process_tree(root)})
    for process in leftovers.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(list(leftovers.values()), timeout=10)


def start_component(component: Component, state_dir: Path, env: dict[str, str]) -> None:
    """Start one component in its own session, detached from this process."""
    with component.log_file(state_dir).open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", *component.args], env={**env, **component.env},
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
    _record_pid(component.pid_file(state_dir), process)


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# -- health -----------------------------------------------------------------------------


def api_health(api_port: int) -> dict[str, Any] | None:
    """The api-server's health document, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v2/monitor/health",
                                    timeout=5) as response:
            return dict(json.loads(response.read()))
    except (OSError, ValueError):
        return None


def unhealthy_parts(health: dict[str, Any] | None) -> list[str]:
    """Which of metadatabase, scheduler, triggerer, dag_processor are not healthy yet."""
    if health is None:
        return ["api-server"]
    return [part for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            if (health.get(part) or {}).get("status") != "healthy"]


def celery_ping(broker_url: str, timeout: float = 5.0) -> set[str]:
    """Node names of the Celery workers that answer `celery inspect ping` on the broker."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-b", broker_url, "inspect", "ping", "--json",
             "--timeout", str(timeout)],
            capture_output=True, text=True, timeout=timeout + 30, check=False)
    except subprocess.TimeoutExpired:
        return set()
    if done.returncode != 0:  # "No nodes replied within time constraint"
        return set()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return set(json.loads(lines[-1])) if lines else set()


def wait_healthy(settings: ClusterSettings, started: list[Component]) -> None:
    """Wait until every component is healthy, at most `settings.deadline` seconds."""
    deadline = time.monotonic() + settings.deadline
    nodes = {c.celery_node for c in started if c.celery_node}
    waiting_for: list[str] = []
    while time.monotonic() < deadline:
        for component in started:
            if running_process(component.pid_file(settings.state_dir)) is None:
                raise ClusterError(f"{component.name} exited during start-up; the end of "
                                   f"{component.log_file(settings.state_dir)}:\n"
                                   f"{log_tail(component.log_file(settings.state_dir))}")
        waiting_for = unhealthy_parts(api_health(settings.api_port))
        if not waiting_for:
            # Only once Airflow is up: each ping starts a Python process.
            missing = nodes - celery_ping(settings.broker_url)
            waiting_for = sorted(missing)
            if not waiting_for:
                return
        time.sleep(POLL_SECONDS)
    raise ClusterError(f"not healthy within {settings.deadline:.0f} s: waiting for "
                       f"{', '.join(waiting_for)}; logs in {settings.state_dir / 'logs'}")


# -- commands ---------------------------------------------------------------------------


def start(settings: ClusterSettings) -> dict[str, Any]:
    """Prepare the databases, start every component, wait until healthy; the cluster's record."""
    state = settings.state_dir.resolve()
    settings = ClusterSettings(**{**asdict(settings), "state_dir": state})
    for directory in ("pids", "logs", "airflow"):
        (state / directory).mkdir(parents=True, exist_ok=True)
    already = [p.stem for p in (state / "pids").glob("*.pid") if running_process(p)]
    if already:
        raise ClusterError(f"a cluster already runs from {state} ({', '.join(sorted(already))}): "
                           "stop it first (make cluster-stop)")
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", settings.api_port))
    except OSError as error:
        raise ClusterError(f"port {settings.api_port} is taken ({error}): choose another "
                           "with --api-port (make cluster CLUSTER_PORT=…)") from error
    check_redis(settings.broker_url)
    ensure_database(settings.postgres, settings.metadata_db)
    env = cluster_env(settings)
    warehouse = env["CEC_WAREHOUSE_URL"]
    if warehouse == database_url(settings.postgres, WAREHOUSE_DB):
        ensure_database(settings.postgres, WAREHOUSE_DB)
    write_cli_env(state / "cluster.env", env)
    env.update(cluster_secrets(state))
    log.info("migrating the metadata DB %s", settings.metadata_db)
    airflow_cli(env, "db", "migrate", timeout=600)
    airflow_cli(env, "pools", "set", *WAREHOUSE_POOL, timeout=120)

    started: list[Component] = []
    try:
        for component in components(settings):
            start_component(component, state, env)
            started.append(component)
            log.info("started %s (log %s)", component.name, component.log_file(state))
        wait_healthy(settings, started)
    except BaseException:
        stop(state, grace=10)
        raise
    record = {
        "ui": f"http://127.0.0.1:{settings.api_port}/",
        "state_dir": str(state),
        "metadata_db": settings.metadata_db,
        "broker": settings.broker_url,
        "data_dir": env["CEC_DATA_DIR"],
        "warehouse": warehouse,
        "components": [
            {"name": c.name, "command": f"airflow {' '.join(c.args)}",
             "pid": json.loads(c.pid_file(state).read_text(encoding="utf-8"))["pid"],
             "log": str(c.log_file(state)), "hostname": c.hostname, "celery_node": c.celery_node}
            for c in started],
    }
    (state / "cluster.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def stop(state_dir: Path, *, grace: float = 60.0) -> list[str]:
    """Stop every component named in the pid files; the names of those that were running."""
    pid_files = sorted((state_dir / "pids").glob("*.pid"))
    found = {p.stem: running_process(p) for p in pid_files}
    running = {name: process for name, process in found.items() if process is not None}
    # Workers first (a warm shutdown lets running tasks report to the api-server), then the
    # rest; each group at once, so stopping takes one grace period per group at most.
    workers = [p for name, p in running.items() if name.startswith("worker-")]
    others = [p for name, p in running.items() if not name.startswith("worker-")]
    for group in (workers, others):
        if group:
            log.info("stopping pids %s", ", ".join(str(p.pid) for p in group))
            kill_trees(group, grace=grace)
    for pid_file in pid_files:
        pid_file.unlink()
    return sorted(running)


def status(state_dir: Path) -> dict[str, Any]:
    """Which components run, the api-server's health and the workers that answer."""
    record_path = state_dir / "cluster.json"
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    running = {p.stem: running_process(p) is not None
               for p in sorted((state_dir / "pids").glob("*.pid"))}
    port = int(record["ui"].rstrip("/").rsplit(":", 1)[1]) if record else None
    return {
        "running": running,
        "health": api_health(port) if port else None,
        "celery_workers": sorted(celery_ping(record["broker"])) if record else [],
    }


def main(argv: Iterable[str] | None = None) -> int:
    """`start`, `status` or `stop` the cluster."""
    defaults = ClusterSettings()
    parser = argparse.ArgumentParser(prog="python -m deploy.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("start", "status", "stop"))
    parser.add_argument("--state-dir", type=Path, default=defaults.state_dir)
    parser.add_argument("--api-port", type=int, default=defaults.api_port)
    parser.add_argument("--postgres", default=defaults.postgres,
                        help="URL of any database on the PostgreSQL server (to create ours)")
    parser.add_argument("--metadata-db", default=defaults.metadata_db)
    parser.add_argument("--redis", default=defaults.redis, help="Redis URL without a DB number")
    parser.add_argument("--redis-db", type=int, default=defaults.redis_db)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--worker-concurrency", type=int, default=defaults.worker_concurrency)
    parser.add_argument("--deadline", type=float, default=defaults.deadline,
                        help="seconds to wait for the cluster to be healthy")
    parser.add_argument("--heartbeat-timeout", type=int, default=None,
                        help="seconds without a task heartbeat before the task is retried on "
                             "another worker (default: deploy/cluster.env's)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # A plain `kill` of a start in progress still stops what it started (see `start`).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if args.command == "stop":
            stopped = stop(args.state_dir)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.command == "status":
            print(json.dumps(status(args.state_dir), indent=1))
        else:
            settings = ClusterSettings(
                state_dir=args.state_dir, api_port=args.api_port, postgres=args.postgres,
                metadata_db=args.metadata_db, redis=args.redis, redis_db=args.redis_db,
                workers=args.workers, worker_concurrency=args.worker_concurrency,
                deadline=args.deadline, heartbeat_timeout=args.heartbeat_timeout)
            record = start(settings)
            print(json.dumps(record, indent=1))
            print(f"\nAirflow UI: {record['ui']}   logs: {record['state_dir']}/logs   "
                  f"CLI: source {record['state_dir']}/cluster.env   stop: make cluster-stop")
    except ClusterError as error:
        print(f"cluster {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
