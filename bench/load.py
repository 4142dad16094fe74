"""Benchmark: load snapshots into DuckDB and PostgreSQL, and read one division back.

    python -m bench.load [--snapshot-dir DIR] [--precincts N] [--backend all|duckdb|postgres]
                         [--repeat N] [--postgres-url URL]

Each run takes an empty, migrated warehouse (a new DuckDB file; a new PostgreSQL schema in a
throwaway database) and times the whole `load_snapshot` call (reading the parquet files,
staging, the transaction, the commit) of:

- `first`: a snapshot into the empty warehouse (every row is new);
- `next`: with a synthetic source, a later snapshot of the same night (the last 5% of the
  precincts counted), stored as versions: only the changed rows are written;
- `restamp`: `next` again under a new snapshot id and a later portal time, nothing else
  changed (the portal re-stamps its pages at every update): no row of divisions, turnout
  or results is written;
- `latest_results` for one precinct (the median of 20 reads) and its `EXPLAIN ANALYZE`.

Without --snapshot-dir the snapshots come from the synthetic-election generator
(`tests/synthetic.py`): kg2021's size by default (2,500 precincts, 21 parties, 36
constituencies: about 5,000 divisions and 70,000 result lines), or --precincts N (20
regions of 50 districts, a party list and 36 constituencies). Targets: kg2021 size, first
load ≤ 2 s DuckDB / ≤ 5 s PostgreSQL; at 100,000 precincts, PostgreSQL load ≤ 30 s and
`latest_results` for one division ≤ 50 ms. Exit 1 when a median misses its target.

Besides wall time, each load's CPU seconds are recorded: the loading process's (user + sys,
all its threads) and, for PostgreSQL, the server backend's that served the load (read from
/proc when the server runs on this machine), since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench import save_report
from etl.warehouse import load_snapshot, migrate
from etl.warehouse.backends import PostgresBackend, connect
from tests.scratch import ADMIN_URL_ENV, DEFAULT_ADMIN_URL, scratch_database, scratch_schema_url
from tests.synthetic import warehouse_snapshot

log = logging.getLogger("bench.load")

KG2021_TARGETS = {"duckdb": 2.0, "postgres": 5.0}
SCALE_TARGETS = {"postgres": 30.0}  # from 100,000 precincts on (issue 9)
QUERY_TARGET_S = 0.05
LATEST_ONE_DIVISION = (
    "SELECT * FROM latest_results WHERE election_id = ? AND contest_id = 'list'"
    " AND division_id = ? ORDER BY line_no"
)


def synthetic_dirs(root: Path, precincts: int | None) -> dict[str, Path]:
    """The `first` (95% counted), `next` (all counted) and `restamp` (`next` re-stamped)
    snapshots of a synthetic night."""
    dirs = {}
    for name, counted in (("first", 0.95), ("next", 1.0)):
        started = time.perf_counter()
        if precincts is None:  # kg2021's size
            snapshot = warehouse_snapshot(f"jk2021-bench-{name}", counted=counted)
        else:
            snapshot = warehouse_snapshot(
                f"jk2021-bench-{name}", counted=counted, regions=20, districts_per_region=50,
                precincts_per_district=max(1, round(precincts / 1000)))
        dirs[name] = snapshot.write(root / name)
        log.info("generated %s: %d divisions, %d result lines in %.1fs", name,
                 len(snapshot.divisions), len(snapshot.results), time.perf_counter() - started)
        del snapshot
    dirs["restamp"] = restamped(dirs["next"], root / "restamp")
    return dirs


def restamped(snapshot_dir: Path, out: Path) -> Path:
    """A copy of a snapshot directory under a new id, 15 minutes later: same rows."""
    meta = json.loads((snapshot_dir / "snapshot.json").read_text(encoding="utf-8"))
    snapshot_id = f"{meta['snapshot_id']}-restamped"
    out.mkdir(parents=True, exist_ok=True)
    for path in snapshot_dir.glob("*.parquet"):
        table = pq.read_table(path)
        at = table.schema.get_field_index("snapshot_id")
        ids = pa.array([snapshot_id] * table.num_rows, table.schema.field(at).type)
        pq.write_table(table.set_column(at, table.schema.field(at), ids), out / path.name)
    later = {key: (datetime.fromisoformat(meta[key].replace("Z", "+00:00"))
                   + timedelta(minutes=15)).isoformat()
             for key in ("portal_updated_at", "fetched_at") if meta.get(key)}
    (out / "snapshot.json").write_text(
        json.dumps({**meta, **later, "snapshot_id": snapshot_id}), encoding="utf-8")
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def server_cpu(seconds: list[float]) -> Any:
    """Append the CPU seconds of each PostgreSQL backend the loader closes (from /proc).

    A benchmark-only wrapper of `close`: the backend process ends with the connection, so
    its CPU is read just before. Nothing is appended when the server is on another machine.
    """
    close = PostgresBackend.close

    def close_after_reading_its_cpu(self: PostgresBackend) -> None:
        stat = Path(f"/proc/{self.connection.info.backend_pid}/stat")
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            seconds.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        except (OSError, IndexError, ValueError):
            pass
        close(self)

    PostgresBackend.close = close_after_reading_its_cpu  # type: ignore[method-assign]
    try:
        yield
    finally:
        PostgresBackend.close = close  # type: ignore[method-assign]


def run_backend(dirs: dict[str, Path], fresh_url: Callable[[], str], repeat: int,
                precinct: str) -> dict[str, Any]:
    """Timings of `repeat` runs, each into a new empty (already migrated) warehouse."""
    loads: dict[str, list[float]] = {name: [] for name in dirs}
    cpu: dict[str, list[float]] = {name: [] for name in dirs}
    server: dict[str, list[float]] = {name: [] for name in dirs}
    reads: list[float] = []
    plan = ""
    rows: dict[str, Any] = {}
    for _ in range(repeat):
        url = fresh_url()
        migrate(url)  # schema creation is a one-off, not part of a snapshot's load
        for name, directory in dirs.items():
            backend_cpu: list[float] = []
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            with server_cpu(backend_cpu):
                summary = load_snapshot(url, directory)
            loads[name].append(time.perf_counter() - started)
            cpu[name].append(_cpu_seconds() - cpu_started)
            server[name].append(sum(backend_cpu))
            rows[name] = {"snapshot": dict(summary.rows), "stored": dict(summary.rows_stored)}
            log.info("%s %s: %.2fs wall, %.2f CPU s (+ %.2f s server), results stored %d of %d",
                     url.split(":")[0], name, loads[name][-1], cpu[name][-1], server[name][-1],
                     summary.rows_stored["results"], summary.rows["results"])
        with connect(url) as db:
            if db.dialect == "postgres":
                db.execute("ANALYZE")  # autovacuum would, a moment later
            found = db.query(LATEST_ONE_DIVISION, ["jk2021", precinct])
            if not found:
                raise RuntimeError(f"latest_results has no rows for precinct {precinct}")
            for _ in range(20):
                started = time.perf_counter()
                db.query(LATEST_ONE_DIVISION, ["jk2021", precinct])
                reads.append(time.perf_counter() - started)
            explain = "EXPLAIN (ANALYZE)" if db.dialect == "postgres" else "EXPLAIN ANALYZE"
            plan = "\n".join(str(row[-1]) for row in db.query(
                f"{explain} {LATEST_ONE_DIVISION}", ["jk2021", precinct]))
    return {
        "loads": {name: {"runs": [round(s, 3) for s in runs],
                         "median": round(statistics.median(runs), 3),
                         "cpu_s": [round(s, 3) for s in cpu[name]],
                         "server_cpu_s": [round(s, 3) for s in server[name]]}
                  for name, runs in loads.items()},
        "latest_results_one_division": {"median_ms": round(statistics.median(reads) * 1000, 2),
                                        "max_ms": round(max(reads) * 1000, 2)},
        "rows": rows,
        "explain": plan,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot-dir", type=Path, default=None,
                        help="a snapshot directory to load (default: synthetic snapshots)")
    parser.add_argument("--precincts", type=int, default=None,
                        help="precincts of the synthetic snapshots (default: kg2021's 2,500)")
    parser.add_argument("--backend", choices=("all", "duckdb", "postgres"), default="all")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend (default 3)")
    parser.add_argument("--postgres-url", default=os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL),
                        help="a database to create the throwaway benchmark database from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("etl").setLevel(logging.WARNING)
    backends = ("duckdb", "postgres") if args.backend == "all" else (args.backend,)
    scale = args.precincts is not None and args.precincts >= 100_000
    targets = SCALE_TARGETS if scale else KG2021_TARGETS

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cec-bench-load-") as scratch:
        if args.snapshot_dir is not None:
            dirs = {"first": args.snapshot_dir}
        else:
            dirs = synthetic_dirs(Path(scratch), args.precincts)
        with connect(f"duckdb:///{scratch}/probe.duckdb") as probe:
            # A precinct of the party list, to read back.
            precinct = probe.query(
                "SELECT division_id FROM read_parquet(?) WHERE contest_id = 'list'"
                " AND level = 'precinct' ORDER BY division_id LIMIT 1",
                [str(dirs["first"] / "divisions.parquet")])[0][0]
        counter = iter(range(1_000_000))
        if "duckdb" in backends:
            figures["duckdb"] = run_backend(
                dirs, lambda: f"duckdb:///{scratch}/warehouse-{next(counter)}.duckdb",
                args.repeat, precinct)
        if "postgres" in backends:
            with scratch_database(args.postgres_url, "cec_bench") as database_url:
                figures["postgres"] = run_backend(
                    dirs, lambda: scratch_schema_url(database_url, "run"), args.repeat, precinct)

    met = True
    for name, result in figures.items():
        target = targets.get(name)
        first = result["loads"]["first"]["median"]
        result["load_target_s"] = target
        result["load_met"] = target is None or first <= target
        read_ms = result["latest_results_one_division"]["median_ms"]
        result["read_met"] = read_ms <= QUERY_TARGET_S * 1000 if scale else None
        met = met and result["load_met"] and result["read_met"] is not False
        loads = ", ".join(
            f"{load} median {v['median']:.2f}s (runs {v['runs']}, CPU s {v['cpu_s']}"
            f"{', server CPU s ' + str(v['server_cpu_s']) if name == 'postgres' else ''})"
            for load, v in result["loads"].items())
        print(f"{name:8} {loads}; latest_results one division {read_ms:.1f} ms"
              f"{'' if target is None else f'; load target <= {target:.0f}s: '}"
              f"{'' if target is None else ('met' if result['load_met'] else 'MISSED')}")
        print(f"{name:8} EXPLAIN ANALYZE of latest_results for precinct {precinct}:\n"
              f"{result['explain']}")
    report = {"source": str(args.snapshot_dir or f"synthetic, {args.precincts or 2500} precincts"),
              "precinct_read": precinct, "backends": figures,
              "load_average": [round(x, 2) for x in os.getloadavg()]}
    save_report(f"load-{args.precincts}" if args.precincts else "load", report)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
