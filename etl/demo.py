"""`make run`: replay election night of 28 November 2021 through the real Airflow DAG.

Starts the portal replica, then for each of its snapshots runs one DAG run of
`cec_results__jk2021` (`dag.test()`, SQLite metadata in a project-local AIRFLOW_HOME),
loading DuckDB and writing alerts to `data/alerts.jsonl`. Prints a timeline as it goes and
the final seat allocation. One more run on the unchanged final portal shows the skip.

Usage: python -m etl.demo [--port 8765] [--keep-data]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from etl import config
from etl.replica.process import control, replica_process

log = logging.getLogger(__name__)

ELECTION_ID = "jk2021"
WAREHOUSE_POOL = "cec_warehouse"
DAG_ID = f"cec_results__{ELECTION_ID}"
# What the replay leaves in the data directory; removed first so each replay starts clean.
REPLAY_OUTPUTS = ("raw", "staging", "reports", "state", "warehouse.duckdb", "warehouse.duckdb.wal",
                  "alerts.jsonl", "alert_state.json", "alert_state.json.lock", "cycles.jsonl")


@contextlib.contextmanager
def quiet(log_path: Path) -> Iterator[None]:
    """Send everything written to fds 1 and 2 (Airflow's task logs) to a file meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log_path.open("ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def prepare_airflow(airflow_home: Path, log_path: Path) -> None:
    """Project-local AIRFLOW_HOME with a migrated SQLite DB and the warehouse pool.

    In this process (what `airflow db migrate` and `airflow pools set` do), not in two more
    interpreters that would each import Airflow again: the DAG runs below need it anyway.
    """
    os.environ["AIRFLOW_HOME"] = str(airflow_home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(config.REPO_ROOT / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    airflow_home.mkdir(parents=True, exist_ok=True)
    with quiet(log_path):
        from airflow.models.pool import Pool
        from airflow.utils import db

        db.upgradedb()
        Pool.create_or_update_pool(WAREHOUSE_POOL, 1, "one DuckDB writer at a time",
                                   include_deferred=False)
        warm_execution_api()


def warm_execution_api() -> None:
    """Start the execution API that `dag.test()` runs tasks against in this process.

    Airflow builds it once per process, on the first task's first request (~1.3 s for the
    app, ~4 s for Cadwyn's routes of every API version, here): done here, with one request
    of its own, the replay's first DAG run is timed for its own work, like the others (in a
    deployment the API server is a service that is up before any run). An Airflow without
    this helper builds it on the first task, as before.
    """
    try:
        from airflow.sdk.execution_time.supervisor import in_process_api_server
    except ImportError:
        return
    import httpx

    try:
        api = in_process_api_server()  # cached: the one `dag.test()` uses
        with httpx.Client(transport=api.transport,
                          base_url="http://in-process.invalid./") as client:
            client.get("health").raise_for_status()
    except Exception:  # only a head start: the first task builds it (or fails) as before
        logging.getLogger(__name__).warning("could not start the execution API ahead of the "
                                            "replay", exc_info=True)


def warm_imports() -> None:
    """Import what the tasks import (pandas, the parsers, Great Expectations) ahead of time.

    `dag.test()` runs every task in this process: importing in a thread while it waits
    (replica start, DAG parsing, the first crawl's network) takes them off the replay's clock.
    """
    import great_expectations  # noqa: F401

    import etl.cycle  # noqa: F401


def national_figures(warehouse_url: str, snapshot_id: str) -> tuple[float | None, float | None]:
    """(protocols counted %, parties' published % sum) of the party list's national page."""
    from etl.warehouse.backends import connect

    with connect(warehouse_url) as db:
        rows = db.query(
            "SELECT t.precincts_counted, t.precincts_total, "
            "  (SELECT sum(r.pct_published) FROM results_by_snapshot r WHERE r.snapshot_id = t.snapshot_id"
            "     AND r.contest_id = t.contest_id AND r.division_id = t.division_id"
            "     AND NOT r.is_against_all) "
            "FROM turnout_by_snapshot t JOIN divisions_by_snapshot d "
            "  USING (snapshot_id, contest_id, division_id) "
            "WHERE t.snapshot_id = ? AND t.contest_id = 'list' AND d.parent_id IS NULL",
            [snapshot_id])
    if not rows:
        return None, None
    counted, total, parties = rows[0]
    counted_pct = counted / total * 100 if counted is not None and total else None
    return counted_pct, (float(parties) if parties is not None else None)


def timeline_row(snapshot: dict[str, Any], cycle: dict[str, Any] | None, warehouse_url: str) -> str:
    """One printed line: portal time, counted %, parties' sum, status, alerts."""
    label = snapshot["label"]
    portal_time = snapshot["portal_time"][:16].replace("T", " ")
    if cycle is None:
        return f"{portal_time}  {label:<22} (no cycle record: see {config.data_dir()}/airflow.log)"
    counted = parties = None
    if cycle["snapshot_id"]:
        counted, parties = national_figures(warehouse_url, cycle["snapshot_id"])
    statuses = [s["status"] for s in cycle["statuses"].values()]
    if cycle["portal"] != "changed":
        status = cycle["portal"]
    else:
        status = ", ".join(f"{statuses.count(s)} {s}" for s in ("published", "quarantined", "failed")
                           if statuses.count(s))
    alerts = "; ".join(f"{a['kind']} {a['contest_id'] or 'portal'}" for a in cycle["alerts"])
    counted_text = f"{counted:6.2f}%" if counted is not None else "      -"
    parties_text = f"{parties:7.2f}%" if parties is not None else "       -"
    return (f"{portal_time}  {label:<22} {counted_text} {parties_text}  {status:<30} "
            f"{alerts or '-'}")


def last_cycle(since_lines: int) -> dict[str, Any] | None:
    """The cycle record the last DAG run appended, if it appended one."""
    from etl.cycle import cycle_log_path

    path = cycle_log_path()
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return json.loads(lines[-1]) if len(lines) > since_lines else None


def cycle_count() -> int:
    """How many cycle records exist so far."""
    from etl.cycle import cycle_log_path

    path = cycle_log_path()
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def replay(base_url: str, warehouse_url: str, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the election DAG once per replica snapshot (or per label given); return the cycles."""
    from airflow.dag_processing.dagbag import DagBag

    airflow_log = config.data_dir() / "airflow.log"
    with quiet(airflow_log):
        dagbag = DagBag(dag_folder=str(config.REPO_ROOT / "dags"))
    if dagbag.import_errors:
        raise RuntimeError(f"DAG import errors: {dagbag.import_errors}")
    dag = dagbag.dags[DAG_ID]
    snapshots = control("GET", f"{base_url}/_replica/snapshots")
    wanted = [s for s in snapshots if labels is None or s["label"] in labels]
    unknown = set(labels or ()) - {s["label"] for s in snapshots}
    if unknown:
        raise ValueError(f"no replica snapshot labelled {', '.join(sorted(unknown))}")
    # The last run repeats the final snapshot: an unchanged portal must be a skipped run.
    runs = [*((s, False) for s in wanted), (wanted[-1], True)]
    cycles = []
    print(f"{'portal time':<16}  {'snapshot':<22} {'counted':>7} {'parties':>8}  "
          f"{'status':<30} alerts", flush=True)
    for number, (snapshot, repeat) in enumerate(runs):
        control("POST", f"{base_url}/_replica/goto?at={snapshot['index']}")
        logical = datetime.fromisoformat(snapshot["portal_time"]) + timedelta(minutes=5 * repeat)
        before = cycle_count()
        started = time.perf_counter()
        with quiet(airflow_log):
            dag.test(logical_date=logical, run_after=logical)
        cycle = last_cycle(before)
        cycles.append({"label": snapshot["label"], "repeat": repeat, "cycle": cycle,
                       "seconds": time.perf_counter() - started})
        print(timeline_row(snapshot, cycle, warehouse_url)
              + f"  [{number + 1}/{len(runs)}, {time.perf_counter() - started:.0f}s]", flush=True)
    return cycles


def print_seats(warehouse_url: str) -> None:
    """The party-list seat allocation of the latest published snapshot."""
    from etl.cycle import latest_seats

    seats = [row for row in latest_seats(warehouse_url, ELECTION_ID, "list") if row["seats"]]
    print("\nSeat allocation (party list, 54 seats, latest published snapshot):")
    for row in sorted(seats, key=lambda r: -int(r["seats"])):
        print(f"  №{row['choice_position']:>2} {row['choice_name']:<40} {row['pct']:6.2f}%  "
              f"{row['seats']:>2} seats")


def _night_index() -> Path:
    """The night index the DAG's `report` task refreshed on every run."""
    from etl.report import site_dir

    return (site_dir(ELECTION_ID) / "index.html").resolve()


def main(argv: list[str] | None = None) -> int:
    """Replay election night; return an exit code."""
    parser = argparse.ArgumentParser(prog="python -m etl.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="replica port (default: a free one)")
    parser.add_argument("--keep-data", action="store_true",
                        help="do not clear the previous replay's outputs from the data directory")
    parser.add_argument("--label", action="append", dest="labels",
                        help="replay only these snapshots (repeatable); default all")
    parser.add_argument("--airflow-home", type=Path, default=config.REPO_ROOT / "airflow_home",
                        help="AIRFLOW_HOME for the replay (default ./airflow_home)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    data = config.data_dir()
    if not args.keep_data:
        for name in REPLAY_OUTPUTS:
            target = data / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CEC_CRAWL_BATCHES", "1")  # dag.test runs mapped tasks one by one
    os.environ.setdefault("CEC_RETRIES", "2")
    warehouse_url = config.warehouse_url()
    started = time.perf_counter()
    print(f"Preparing Airflow (AIRFLOW_HOME={args.airflow_home}) …", flush=True)
    prepare_airflow(args.airflow_home.resolve(), data / "airflow.log")
    # After Airflow's own imports (two threads importing one package tree at once is asking
    # for trouble), while the replica starts and the first crawl waits on the network.
    threading.Thread(target=warm_imports, name="warm-imports", daemon=True).start()
    with replica_process(at="0", port=args.port) as base_url:
        os.environ["CEC_PORTAL_URL"] = base_url
        print(f"Replica of the CEC portal at {base_url}; warehouse {warehouse_url}; "
              f"Airflow task logs in {data / 'airflow.log'}\n", flush=True)
        cycles = replay(base_url, warehouse_url, args.labels)
    print_seats(warehouse_url)
    seconds = [c["seconds"] for c in cycles]
    print(f"\nAlerts: {config.alerts_file()}  Reports: {config.report_dir()}  "
          f"Cycle log: {data / 'cycles.jsonl'}")
    print(f"Replay finished in {time.perf_counter() - started:.0f}s; {len(seconds)} DAG runs, "
          f"median {statistics.median(seconds):.1f}s, max {max(seconds):.1f}s.")
    night_index = _night_index()
    print(f"Election-night report: {night_index}" if night_index.exists()
          else f"Election-night report missing ({night_index}): see {data / 'airflow.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
