"""Benchmark: load snapshots into DuckDB and PostgreSQL, and read one division back.

    python -m bench.load [--snapshot-dir DIR] [--precincts N] [--backend all|duckdb|postgres]
                         [--repeat N] [--postgres-url URL]

Each run takes an empty, migrated warehouse (a new DuckDB file; a new PostgreSQL schema in a
throwaway database) and times the whole `load_snapshot` call (reading the parquet files,
staging, the transaction, the commit) of:

- `first`: a snapshot into the empty warehouse (every row is new);
- `next`: with a synthetic source, a later snapshot of the same night (the last 5% of the
  precincts counted), stored as versions: only the changed rows are written;
- `latest_results` for one precinct (the median of 20 reads) and its `EXPLAIN ANALYZE`.

Without --snapshot-dir the snapshots come from the synthetic-election generator
(`tests/synthetic.py`): kg2021's size by default (2,500 precincts, 21 parties, 36
constituencies: about 5,000 divisions and 70,000 result lines), or --precincts N (20
regions of 50 districts, a party list and 36 constituencies). Targets: kg2021 size, first
load ≤ 2 s DuckDB / ≤ 5 s PostgreSQL; at 100,000 precincts, PostgreSQL load ≤ 30 s and
`latest_results` for one division ≤ 50 ms. Exit 1 when a median misses its target.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import save_report
from etl.warehouse import load_snapshot, migrate
from etl.warehouse.backends import connect
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
    """The `first` (95% counted) and `next` (all counted) snapshots of a synthetic night."""
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
    return dirs


def run_backend(dirs: dict[str, Path], fresh_url: Callable[[], str], repeat: int,
                precinct: str) -> dict[str, Any]:
    """Timings of `repeat` runs, each into a new empty (already migrated) warehouse."""
    loads: dict[str, list[float]] = {name: [] for name in dirs}
    reads: list[float] = []
    plan = ""
    rows: dict[str, Any] = {}
    for _ in range(repeat):
        url = fresh_url()
        migrate(url)  # schema creation is a one-off, not part of a snapshot's load
        for name, directory in dirs.items():
            started = time.perf_counter()
            summary = load_snapshot(url, directory)
            loads[name].append(time.perf_counter() - started)
            rows[name] = {"snapshot": dict(summary.rows), "stored": dict(summary.rows_stored)}
            log.info("%s %s: %.2fs, results stored %d of %d", url.split(":")[0], name,
                     loads[name][-1], summary.rows_stored["results"], summary.rows["results"])
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
                         "median": round(statistics.median(runs), 3)}
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
        loads = ", ".join(f"{load} median {v['median']:.2f}s (runs {v['runs']})"
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
