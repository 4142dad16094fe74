"""Benchmark: load one final-size snapshot into DuckDB and into PostgreSQL (targets 2 s / 5 s).

    python -m bench.load [--snapshot-dir DIR] [--repeat N] [--postgres-url URL]

Without --snapshot-dir a synthetic kg2021-sized snapshot is generated (about 5,000
divisions and 64,000 result lines). Each run loads into an empty, migrated warehouse (a new
DuckDB file; a new PostgreSQL schema in a throwaway database), timing the whole
`load_snapshot` call: reading the parquet files, staging, the transaction and the commit.
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

from bench import save_report
from etl.warehouse import load_snapshot, migrate
from etl.warehouse.scratch import (
    ADMIN_URL_ENV,
    DEFAULT_ADMIN_URL,
    scratch_database,
    scratch_schema_url,
)
from etl.warehouse.synthetic import synthetic_snapshot

log = logging.getLogger("bench.load")

TARGETS = {"duckdb": 2.0, "postgres": 5.0}


def time_loads(snapshot_dir: Path, fresh_url: Callable[[], str], repeat: int) -> list[float]:
    """Wall seconds of `repeat` loads, each into a new empty (already migrated) warehouse."""
    seconds = []
    for _ in range(repeat):
        url = fresh_url()
        migrate(url)  # schema creation is a one-off, not part of a snapshot's load
        started = time.perf_counter()
        summary = load_snapshot(url, snapshot_dir)
        seconds.append(time.perf_counter() - started)
        log.info("%s: %.3fs, rows %s", url.split(":")[0], seconds[-1], dict(summary.rows))
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot-dir", type=Path, default=None,
                        help="a snapshot directory to load (default: a synthetic final one)")
    parser.add_argument("--repeat", type=int, default=3, help="loads per backend (default 3)")
    parser.add_argument("--postgres-url", default=os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL),
                        help="a database to create the throwaway benchmark database from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("etl").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="cec-bench-load-") as scratch:
        snapshot_dir = args.snapshot_dir
        if snapshot_dir is None:
            snapshot_dir = synthetic_snapshot("jk2021-bench").write(Path(scratch) / "snapshot")
        counter = iter(range(1_000_000))
        timings = {
            "duckdb": time_loads(
                snapshot_dir,
                lambda: f"duckdb:///{scratch}/warehouse-{next(counter)}.duckdb",
                args.repeat,
            )
        }
        with scratch_database(args.postgres_url, "cec_bench") as database_url:
            timings["postgres"] = time_loads(
                snapshot_dir, lambda: scratch_schema_url(database_url, "run"), args.repeat
            )

    backends = {
        name: {"runs": [round(s, 3) for s in runs], "median": round(statistics.median(runs), 3),
               "target": TARGETS[name], "met": statistics.median(runs) <= TARGETS[name]}
        for name, runs in timings.items()
    }
    report = {"snapshot_dir": str(args.snapshot_dir or "synthetic"), "backends": backends}
    save_report("load", report)
    for name, figures in backends.items():
        print(f"load into {name:8} median {figures['median']:.3f}s "
              f"(runs {figures['runs']}; target <= {figures['target']:.0f}s: "
              f"{'met' if figures['met'] else 'MISSED'})")
    return 0 if all(figures["met"] for figures in backends.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
