"""Benchmark: freshness of election-night results under a real Airflow scheduler.

    python -m bench.freshness [--mode watch|cron] [--poll 3] [--snapshots 15] [--every 45]
                              [--at polls-closed] [--db sqlite|postgres] [--grace 120] [--keep]

What it measures: a real Airflow 3 deployment (scheduler, triggerer, dag-processor,
api-server, LocalExecutor) runs `cec_results__jk2021` against the portal replica, which the
benchmark steps through `--snapshots` snapshots of the kg2021 timeline (from the one after
`--at`), one every `--every` wall seconds (`--every 0`: the replica's own live mode at
`--speed` and `--minutes` instead). Measured: the wall time from the portal publishing a
snapshot (the replica's `GET /_replica/state` index changes) to the pipeline showing it: a
line in `cycles.jsonl` for that snapshot's `portal_updated_at` (written by the `alert` task
after `publish` loaded the warehouse or quarantined), or, for the withdrawn snapshots, an
`unavailable` cycle checked after the withdrawal. Both sides are polled once a second, so
each figure is +-1 s. Targets (issue 8): p95 <= 20 s, max <= 30 s.

`--mode watch` (default, the shipped rule file's mode): the DAG is scheduled on the Asset
`cec://jk2021/portal`, which a `PortalChangeTrigger` in the triggerer updates when its
conditional poll of the election page (every `--poll` s) sees a change. `--mode cron`: the
fallback, a run every minute (`* * * * *`). The report also counts the DAG runs in the
metadata DB against the portal changes: in watch mode about one run per change, never one
per poll (`one_run_per_change` in the report; the benchmark exits 1 when it is false).

The snapshot served when the replica starts is processed while Airflow is still warming
up; it is reported as `initial` and left out of the figures (stepped mode waits for it to
show before the first step). Snapshots published
after `--minutes` are not tracked; those published before get up to `--grace` more seconds
to show. The report (per snapshot: label, published_at, shown_at, seconds, and the split
into waiting for a scheduled run vs. processing; median, max; cycles skipped as unchanged;
the schedule and the exact Airflow setup) is printed and written to
`bench/results/freshness.json`.

Everything runs in a temporary directory, removed afterwards unless `--keep`:
  - its own AIRFLOW_HOME (DAGS_FOLDER = this repo's `dags/`, no examples, DAGs unpaused at
    creation), metadata DB = SQLite file there (default) or a throwaway PostgreSQL database
    `cec_airflow_bench_<random>` on 127.0.0.1:5432 (user postgres), dropped at the end;
  - its own CEC_DATA_DIR (raw archive, staging, DuckDB warehouse, alerts, cycles.jsonl);
  - CEC_ELECTIONS_DIR with a copy of `elections/jk2021.toml` whose [schedule] is
    `mode = "watch"`, `poll_seconds = --poll` (or `mode = "cron"`, `cron = "* * * * *"`),
    start = now (UTC, floored to the minute) - 1 min, end = now + 2 h;
  - CEC_PORTAL_URL = the replica, CEC_CRAWL_BATCHES = 1.

Airflow components (Airflow 3.x, LocalExecutor): `airflow api-server` (the task execution
API the LocalExecutor's workers talk to, and the UI), `airflow dag-processor`,
`airflow scheduler`, `airflow triggerer` (runs the portal watcher); each in its own process
group, terminated at the end. The UI URL is printed at start (all users are admins there,
bound to 127.0.0.1): open it to watch the runs live.

The same by hand, to watch it live (each long-running command in its own shell; the
api-server's port serves the UI; `airflow standalone` instead of the last three also works
in principle: it forces the LocalExecutor and also starts a triggerer):

    export AIRFLOW_HOME=/tmp/af AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags \
        AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__EXECUTOR=LocalExecutor \
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False \
        CEC_DATA_DIR=/tmp/af-data CEC_ELECTIONS_DIR=/tmp/af-elections \
        CEC_PORTAL_URL=http://127.0.0.1:8765 CEC_CRAWL_BATCHES=1
    # /tmp/af-elections/jk2021.toml: a copy whose [schedule] window starts now
    airflow db migrate && airflow pools set cec_warehouse 1 "one DuckDB writer at a time"
    python -m etl.replica --live --speed 3.5 --at counting-3 --port 8765
    airflow api-server --port 8080    # UI: http://127.0.0.1:8080/
    airflow dag-processor
    airflow scheduler
    airflow triggerer
    tail -f /tmp/af-data/cycles.jsonl

Default timing: from `polls-closed`, 15 snapshots (counting-1 ... annulment: the formula
error and its quarantine, both withdrawals, the recounts) 45 s apart, about 12 minutes:
longer than a cycle, so no snapshot can slip between two runs. The replica's live mode
(`--every 0 --at counting-3 --speed 3.5 --minutes 12`) plays the real gaps instead (5
snapshots in 12 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from bench import save_report
from etl import config
from etl.elections import parse_election_file
from etl.replica.process import control, free_port, replica_process

ELECTION_ID = "jk2021"
DAG_ID = f"cec_results__{ELECTION_ID}"
CRON = "* * * * *"
TARGET_P95_SECONDS = 20.0
TARGET_MAX_SECONDS = 30.0
POLL_SECONDS = 1.0
# Replica snapshot modes in which the portal shows no results: the pipeline can only show
# them as an `unavailable` cycle.
WITHDRAWN_MODES = frozenset({"maintenance", "unavailable"})


# -- setup ------------------------------------------------------------------------------


def schedule_window(now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the rewritten schedule: a minute ago (floored) to two hours on."""
    start = now.astimezone(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    return start, start + timedelta(minutes=1, hours=2)


def write_election_file(target_dir: Path, start: datetime, end: datetime, mode: str = "watch",
                        poll_seconds: float = 3.0) -> Path:
    """Copy jk2021.toml with its [schedule] replaced by a window around now (watch or cron)."""
    source = config.REPO_ROOT / "elections" / f"{ELECTION_ID}.toml"
    text = source.read_text(encoding="utf-8")
    block = (f'[schedule]\nstart = "{start.isoformat()}"\nend = "{end.isoformat()}"\n'
             f'mode = "{mode}"\npoll_seconds = {poll_seconds:g}\ncron = "{CRON}"\n\n')
    # The section runs from its header to the next table header (comments included).
    rewritten, count = re.subn(r"^\[schedule\]\n(?:(?!\[).*\n)*", block, text, flags=re.M)
    if count != 1:
        raise RuntimeError(f"{source}: expected one [schedule] section, found {count}")
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / source.name
    target.write_text(rewritten, encoding="utf-8")
    # Read it back the way the DAG factory will, so a bad rewrite fails here, not in Airflow.
    schedule = parse_election_file(target).schedule
    if schedule is None or schedule.mode != mode or schedule.start != start:
        raise RuntimeError(f"{target}: the rewritten [schedule] did not parse back: {schedule}")
    return target


@contextlib.contextmanager
def metadata_db(kind: str, airflow_home: Path) -> Iterator[str]:
    """SQLAlchemy URL of Airflow's metadata DB: a SQLite file, or a throwaway PG database."""
    if kind == "sqlite":
        yield f"sqlite:///{airflow_home / 'airflow.db'}"
        return
    import importlib.util

    from tests.scratch import DEFAULT_ADMIN_URL, scratch_database

    if importlib.util.find_spec("asyncpg") is None:
        # Airflow 3 opens an async connection too, and maps postgresql to asyncpg for it.
        raise RuntimeError("--db postgres needs asyncpg (in requirements.txt): make setup")
    with scratch_database(DEFAULT_ADMIN_URL, "cec_airflow_bench") as url:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3 anyway; say it explicitly.
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


# Airflow imports `airflow_local_settings` from $AIRFLOW_HOME/config in every component. In
# the scheduler, whose LocalExecutor workers fork every task process, it imports what every
# task imports (pandas, pyarrow, the parsers, Great Expectations): each of a run's seven
# tasks then starts with them loaded instead of importing them again (seconds per task).
# The same works for Celery workers (a worker_process_init import); see the README.
LOCAL_SETTINGS = '''"""Preload the pipeline in the scheduler: its LocalExecutor forks every task from it."""
import sys

if sys.argv[1:2] == ["scheduler"]:
    import great_expectations  # noqa: F401

    import etl.cycle  # noqa: F401
'''


def write_local_settings(airflow_home: Path) -> Path:
    """$AIRFLOW_HOME/config/airflow_local_settings.py (see LOCAL_SETTINGS)."""
    target = airflow_home / "config" / "airflow_local_settings.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(LOCAL_SETTINGS, encoding="utf-8")
    return target


def airflow_env(root: Path, db_url: str, api_port: int, elections_dir: Path,
                portal_url: str) -> dict[str, str]:
    """The environment every Airflow component (and so every task) runs with."""
    env = dict(os.environ)
    api = f"http://127.0.0.1:{api_port}"
    env.update({
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(config.REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # The LocalExecutor forks this many workers up front (default 32): 8 is plenty for
        # one election DAG (one crawl batch) and the example consumer on a small machine.
        "AIRFLOW__CORE__PARALLELISM": "8",
        # The scheduler's log server defaults to port 8793: another Airflow on this machine
        # (a colleague's `airflow standalone`) may hold it.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        # The LocalExecutor's task processes report to the execution API of this api-server.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        # Scheduler (signs task tokens) and api-server (checks them) must share the secret;
        # set it here rather than rely on the one airflow.cfg generation wrote.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        # A throwaway local deployment: the UI opens without a login.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "CEC_DATA_DIR": str(root / "data"),
        "CEC_ELECTIONS_DIR": str(elections_dir),
        "CEC_PORTAL_URL": portal_url,
        "CEC_CRAWL_BATCHES": "1",
    })
    # Settings that would point the pipeline at the developer's own files are dropped.
    for name in ("CEC_RAW_DIR", "CEC_STAGING_DIR", "CEC_REPORT_DIR", "CEC_WAREHOUSE_URL",
                 "CEC_ALERTS_FILE", "AIRFLOW_CONFIG"):
        env.pop(name, None)
    return env


def airflow_cli(env: dict[str, str], *args: str, timeout: float) -> str:
    """Run one `airflow …` command to completion (bounded); its stdout."""
    done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return done.stdout


# -- the running deployment -------------------------------------------------------------


@dataclass
class Component:
    """One long-running Airflow command in its own process group."""

    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: TextIO | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log_file = self.log_path.open("w", encoding="utf-8")
        # Own session: stopping it reaches the LocalExecutor's worker processes too.
        self.process = subprocess.Popen([sys.executable, "-m", "airflow", *self.args], env=env,
                                        stdout=self.log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the group (graceful shutdown), SIGKILL it if still there after `timeout`."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)
        # The leader may be gone while its workers linger: clear the group either way (its
        # id stays reserved while any member lives, so this reaches only what we started).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.log_file:
            self.log_file.close()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def api_healthy(api_port: int) -> bool:
    """True once the api-server answers its health endpoint."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v2/monitor/health",
                                    timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# -- measuring --------------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class Tracked:
    """One replica snapshot: when the portal showed it, when the pipeline did."""

    index: int
    label: str
    mode: str
    portal_time: datetime
    published_at: datetime
    initial: bool = False
    shown_at: datetime | None = None
    cycle: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # the DAG run that logged `cycle`
    tasks: dict[str, float] = field(default_factory=dict)  # its task durations, seconds

    def to_json(self) -> dict[str, Any]:
        seconds = wait = processing = None
        checked = self.cycle.get("checked_at")
        if self.shown_at is not None:
            seconds = round((self.shown_at - self.published_at).total_seconds(), 1)
        if self.shown_at is not None and checked:
            checked_at = datetime.fromisoformat(checked)
            # wait: published → the detecting run's first request; processing: → logged.
            wait = round((checked_at - self.published_at).total_seconds(), 1)
            processing = round((self.shown_at - checked_at).total_seconds(), 1)
        statuses = [s["status"] for s in self.cycle.get("statuses", {}).values()]
        return {
            "index": self.index, "label": self.label, "mode": self.mode,
            "portal_time": self.portal_time.isoformat(),
            "published_at": self.published_at.isoformat(timespec="milliseconds"),
            "shown_at": self.shown_at.isoformat(timespec="milliseconds") if self.shown_at else None,
            "seconds": seconds, "wait_for_run_seconds": wait, "processing_seconds": processing,
            "shown_as": self.cycle.get("portal"),
            "contests": {s: statuses.count(s) for s in sorted(set(statuses))},
            "alerts": sorted({a["kind"] for a in self.cycle.get("alerts", [])}),
            "run_id": self.run.get("run_id"),
            # How late the scheduler started the run after its cron tick.
            "run_start_delay_seconds": _seconds_between(self.run.get("run_after"),
                                                        self.run.get("start_date")),
            "task_seconds": self.tasks,
        }


@dataclass
class Watcher:
    """Polls the replica's state and the cycle log; matches cycles to snapshots."""

    base_url: str
    cycle_log: Path
    timeline: list[dict[str, Any]]
    snapshots: list[Tracked] = field(default_factory=list)
    cycles: list[dict[str, Any]] = field(default_factory=list)
    tracking: bool = True
    _offset: int = 0
    _index: int | None = None

    def poll_replica(self) -> None:
        """Record the wall time at which each new snapshot became visible."""
        try:
            index = int(control("GET", f"{self.base_url}/_replica/state")["index"])
        except OSError:
            return  # a missed poll only widens the error bar by a second
        if index == self._index:
            return
        seen = now_utc()
        first = self._index is None
        # Normally one step; if a poll was slow, every skipped snapshot is stamped too.
        start = index if self._index is None else self._index + 1
        for i in range(start, index + 1):
            entry = self.timeline[i]
            if self.tracking or first:
                self.snapshots.append(Tracked(
                    i, entry["label"], entry.get("mode", "results"),
                    datetime.fromisoformat(entry["portal_time"]), seen, initial=first))
        self._index = index

    def poll_cycles(self) -> None:
        """Read the cycle lines appended since the last poll and match them."""
        if not self.cycle_log.exists():
            return
        with self.cycle_log.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits a second
        self._offset += len(complete)
        seen = now_utc()
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                record["_seen_at"] = seen.isoformat(timespec="milliseconds")
                self.cycles.append(record)
                self._match(record, seen)

    def _match(self, record: dict[str, Any], seen: datetime) -> None:
        if record.get("election_id") != ELECTION_ID:
            return
        if record["portal"] == "changed" and record.get("portal_updated_at"):
            updated = datetime.fromisoformat(record["portal_updated_at"])
            for snapshot in self.snapshots:
                if snapshot.portal_time == updated and snapshot.shown_at is None:
                    snapshot.shown_at, snapshot.cycle = seen, record
        elif record["portal"] == "unavailable":
            # An unavailable cycle shows the withdrawn snapshot that was up when it checked.
            checked = datetime.fromisoformat(record["checked_at"])
            current = [s for s in self.snapshots if s.published_at <= checked]
            if current and current[-1].mode in WITHDRAWN_MODES and current[-1].shown_at is None:
                current[-1].shown_at, current[-1].cycle = seen, record

    def pending(self) -> list[Tracked]:
        return [s for s in self.snapshots if s.shown_at is None]


# -- the run ----------------------------------------------------------------------------


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def airflow_json(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    """A `… -o json` listing from the Airflow CLI; [] (and a note) if it cannot be had."""
    try:
        out = airflow_cli(env, *args, "-o", "json", timeout=120)
        # Airflow's own warnings share stdout with the JSON: the list is the last line.
        lines = [line for line in out.splitlines() if line.startswith("[")]
        return list(json.loads(lines[-1])) if lines else []
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        print(f"airflow {' '.join(args)}: {error}", file=sys.stderr)
        return []


def attach_runs(env: dict[str, str], watcher: Watcher) -> list[dict[str, Any]]:
    """The election DAG's runs; each shown snapshot gets the run that logged it and its tasks."""
    runs = airflow_json(env, "dags", "list-runs", DAG_ID)
    for snapshot in watcher.snapshots:
        checked = snapshot.cycle.get("checked_at")
        if not checked:
            continue
        at = datetime.fromisoformat(checked)
        for run in runs:
            begun, ended = run.get("start_date"), run.get("end_date")
            if begun and datetime.fromisoformat(begun) <= at and (
                    not ended or at <= datetime.fromisoformat(ended)):
                snapshot.run = run
                break
        if snapshot.run:
            for ti in airflow_json(env, "tasks", "states-for-dag-run", DAG_ID,
                                   snapshot.run["run_id"]):
                took = _seconds_between(ti.get("start_date"), ti.get("end_date"))
                if took is not None:
                    snapshot.tasks[str(ti["task_id"])] = took
    return runs


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 1)


def summarise(watcher: Watcher, runs: list[dict[str, Any]], args: argparse.Namespace,
              setup: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    """The JSON report."""
    measured = [s for s in watcher.snapshots if not s.initial]
    rows = [s.to_json() for s in measured if s.shown_at is not None]
    seconds = [r["seconds"] for r in rows]
    waits = [r["wait_for_run_seconds"] for r in rows if r["wait_for_run_seconds"] is not None]
    processing = [r["processing_seconds"] for r in rows if r["processing_seconds"] is not None]
    kinds = [c["portal"] for c in watcher.cycles]
    states = [str(r.get("state")) for r in runs]
    # `dags list-runs` shows no run type: the run id's prefix is it (asset_triggered, scheduled).
    run_types = [str(r.get("run_type") or str(r.get("run_id", "")).split("__")[0]) for r in runs]
    durations = [(datetime.fromisoformat(r["end_date"]) - datetime.fromisoformat(r["start_date"]))
                 .total_seconds() for r in runs if r.get("start_date") and r.get("end_date")]
    p95, worst = percentile(seconds, 95), (max(seconds) if seconds else None)
    # Every snapshot the portal showed (the initial one included) is one change; a run per
    # poll would be hundreds. "About one per change": a change seen mid-run may add one.
    changes = len(watcher.snapshots)
    polls = wall_seconds / args.poll if args.mode == "watch" else None
    one_run_per_change = args.mode != "watch" or len(runs) <= changes + 2
    meets = (p95 is not None and worst is not None and p95 <= TARGET_P95_SECONDS
             and worst <= TARGET_MAX_SECONDS and not any(s.shown_at is None for s in measured))
    return {
        "benchmark": "freshness: replica publishes a snapshot -> cycles.jsonl shows it "
                     "(warehouse loaded / quarantined, or an unavailable cycle)",
        "command": "python -m bench.freshness " + " ".join(sys.argv[1:]),
        "schedule": setup["schedule"],
        "replica": ({"stepped_every_seconds": args.every, "snapshots": args.snapshots,
                     "start_at": args.at} if args.every else
                    {"speed": args.speed, "start_at": args.at, "minutes": args.minutes}),
        "setup": setup,
        "wall_seconds": round(wall_seconds, 1),
        "initial": [s.to_json() for s in watcher.snapshots if s.initial],
        "snapshots": [s.to_json() for s in measured],
        "not_shown": [s.label for s in measured if s.shown_at is None],
        "p50_seconds": percentile(seconds, 50),
        "p95_seconds": p95,
        "max_seconds": worst,
        "wait_for_run_median_seconds": percentile(waits, 50),
        "wait_for_run_max_seconds": max(waits) if waits else None,
        "processing_median_seconds": percentile(processing, 50),
        "processing_max_seconds": max(processing) if processing else None,
        "targets": {"p95_seconds": TARGET_P95_SECONDS, "max_seconds": TARGET_MAX_SECONDS},
        "meets_target": meets,
        "cycles": {"total": len(kinds), "changed": kinds.count("changed"),
                   "skipped_unchanged": kinds.count("unchanged"),
                   "unavailable": kinds.count("unavailable")},
        "dag_runs": {"total": len(runs),
                     "by_type": {t: run_types.count(t) for t in sorted(set(run_types))},
                     "by_state": {s: states.count(s) for s in sorted(set(states))},
                     "median_seconds": percentile(durations, 50),
                     "max_seconds": round(max(durations), 1) if durations else None},
        "portal_changes": changes,
        "watcher_polls_estimated": round(polls) if polls else None,
        "one_run_per_change": one_run_per_change,
    }


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Set up, start everything, measure, stop everything; the report."""
    started = time.monotonic()
    start, end = schedule_window(now_utc())
    elections_dir = root / "elections"
    write_election_file(elections_dir, start, end, args.mode, args.poll)
    (root / "airflow").mkdir(parents=True)
    if args.preload:
        write_local_settings(root / "airflow")
    logs = root / "logs"
    logs.mkdir()
    api_port = free_port()
    components = [
        Component("api-server", ["api-server", "--port", str(api_port)], logs / "api-server.log"),
        Component("dag-processor", ["dag-processor"], logs / "dag-processor.log"),
        Component("scheduler", ["scheduler"], logs / "scheduler.log"),
        Component("triggerer", ["triggerer"], logs / "triggerer.log"),
    ]
    with metadata_db(args.db, root / "airflow") as db_url:
        print(f"Preparing Airflow in {root} (metadata DB: {args.db}) …", flush=True)
        # The portal URL is only known once the replica runs: set below, before any component.
        env = airflow_env(root, db_url, api_port, elections_dir, "")
        airflow_cli(env, "db", "migrate", timeout=600)
        airflow_cli(env, "pools", "set", "cec_warehouse", "1", "one DuckDB writer at a time",
                    timeout=600)
        shown_env = {k: v for k, v in env.items()
                     if k.startswith("CEC_") or (k.startswith("AIRFLOW__") and "SECRET" not in k
                                                 and "SQL_ALCHEMY_CONN" not in k)}
        setup: dict[str, Any] = {
            "airflow": _airflow_version(),
            "executor": "LocalExecutor",
            "metadata_db": args.db if args.db == "sqlite" else "postgresql+psycopg (throwaway DB)",
            "components": [f"airflow {' '.join(c.args)}" for c in components],
            "airflow_home": str(root / "airflow"),
            "env": shown_env,
            "schedule": ({"mode": "watch", "poll_seconds": args.poll} if args.mode == "watch"
                         else {"mode": "cron", "cron": CRON})
                        | {"start": start.isoformat(), "end": end.isoformat()},
            "crawl_batches": 1,
            "scheduler_preloads_pipeline": args.preload,
            "load_average_at_start": os.getloadavg(),
        }
        live = not args.every
        with replica_process(at=args.at, live=live, speed=args.speed) as base_url:
            env["CEC_PORTAL_URL"] = shown_env["CEC_PORTAL_URL"] = base_url
            timeline = control("GET", f"{base_url}/_replica/snapshots")
            watcher = Watcher(base_url, root / "data" / "cycles.jsonl", timeline)
            watcher.poll_replica()
            replica_started = time.monotonic()
            print(f"Replica at {args.at!r}" + (f", live x{args.speed:g}" if live else
                  f", stepped every {args.every:g} s for {args.snapshots} snapshots")
                  + f": {base_url}", flush=True)
            try:
                for component in components:
                    component.start(env)
                print(f"Airflow UI: http://127.0.0.1:{api_port}/  (logs in {logs}; "
                      f"task logs in {root / 'airflow' / 'logs'})", flush=True)
                watch(watcher, components, api_port, replica_started, args)
                # While the metadata DB still exists (not on the way out of an error).
                runs = attach_runs(env, watcher)
            finally:
                for component in reversed(components):
                    component.stop()
        setup["load_average_at_end"] = os.getloadavg()
    return summarise(watcher, runs, args, setup, time.monotonic() - started)


@dataclass
class Stepper:
    """Stepped mode: publish the next snapshot every `every` seconds, `count` times.

    The first step waits for the initial snapshot to show (Airflow warmed up), at most
    `warmup` seconds.
    """

    base_url: str
    every: float
    count: int
    warmup: float = 300.0
    steps: int = 0
    next_at: float | None = None

    def tick(self, watcher: Watcher, now: float, started: float) -> None:
        if self.steps >= self.count:
            return
        if self.next_at is None:
            initial_shown = bool(watcher.snapshots) and watcher.snapshots[0].shown_at is not None
            if not initial_shown and now - started < self.warmup:
                return
            self.next_at = now
        if now < self.next_at:
            return
        index = int(control("GET", f"{self.base_url}/_replica/state")["index"]) + 1
        if index >= len(watcher.timeline):
            self.steps = self.count
            return
        control("POST", f"{self.base_url}/_replica/goto?at={index}")
        watcher.poll_replica()
        self.steps += 1
        self.next_at += self.every

    @property
    def done(self) -> bool:
        return self.steps >= self.count


def watch(watcher: Watcher, components: list[Component], api_port: int, replica_started: float,
          args: argparse.Namespace) -> None:
    """Poll once a second until the last snapshot (+ up to `--grace` for pending ones)."""
    stepper = Stepper(watcher.base_url, args.every, args.snapshots) if args.every else None
    # Live mode: `--minutes`; stepped mode: until the last step (bounded all the same).
    stop_tracking = replica_started + (
        args.minutes * 60 if stepper is None else stepper.warmup + args.every * args.snapshots)
    hard_deadline = stop_tracking + args.grace
    api_ready = False
    reported_snapshots = reported_cycles = 0
    while time.monotonic() < hard_deadline:
        tick = time.monotonic()
        for component in components:
            if component.exited() is not None:
                raise RuntimeError(f"airflow {component.name} exited with {component.exited()}:\n"
                                   f"{component.log_tail()}")
        if not api_ready and api_healthy(api_port):
            api_ready = True
            print(f"[{tick - replica_started:5.0f}s] api-server ready", flush=True)
        if stepper is not None:
            stepper.tick(watcher, tick, replica_started)
            if stepper.done and watcher.tracking:
                stop_tracking = min(stop_tracking, tick)
        if tick >= stop_tracking and watcher.tracking:
            watcher.tracking = False
            hard_deadline = min(hard_deadline, tick + args.grace)
            if not watcher.pending():
                break
        watcher.poll_replica()
        watcher.poll_cycles()
        for snapshot in watcher.snapshots[reported_snapshots:]:
            print(f"[{tick - replica_started:5.0f}s] portal published {snapshot.label}", flush=True)
        for record in watcher.cycles[reported_cycles:]:
            print(f"[{tick - replica_started:5.0f}s] cycle logged: portal {record['portal']} "
                  f"{record.get('portal_updated_at') or ''}", flush=True)
        reported_snapshots, reported_cycles = len(watcher.snapshots), len(watcher.cycles)
        if not watcher.tracking and not watcher.pending():
            break
        time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - tick)))


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and save the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("watch", "cron"), default="watch",
                        help="schedule: the portal watcher (default) or a 1-minute cron")
    parser.add_argument("--poll", type=float, default=3.0,
                        help="watch mode: seconds between conditional polls (default 3)")
    parser.add_argument("--snapshots", type=int, default=15,
                        help="stepped mode: snapshots to publish (default 15)")
    parser.add_argument("--every", type=float, default=45.0,
                        help="stepped mode: wall seconds between snapshots (default 45); "
                             "0 = the replica's live mode at --speed for --minutes")
    parser.add_argument("--minutes", type=float, default=12.0,
                        help="live mode: how long snapshots are tracked (default 12)")
    parser.add_argument("--speed", type=float, default=3.5,
                        help="live mode: portal seconds per wall second (default 3.5)")
    parser.add_argument("--at", default="polls-closed",
                        help="replica snapshot to start from, label or index (default polls-closed)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite",
                        help="Airflow metadata DB (default sqlite)")
    parser.add_argument("--grace", type=float, default=120.0,
                        help="extra seconds for snapshots published before the end to show")
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="do not preload the pipeline's modules in the scheduler")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    # A plain `kill` (or `timeout`) must still stop Airflow and drop the database: turn
    # SIGTERM into SystemExit so every `finally` below runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    root = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    try:
        report = run(args, root)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    save_report("freshness", report)
    print(json.dumps(report, indent=1, ensure_ascii=False))
    if not report["one_run_per_change"]:
        print(f"FAIL: {report['dag_runs']['total']} DAG runs for {report['portal_changes']} "
              "portal changes: the watcher fires without a change", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
