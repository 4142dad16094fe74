"""Benchmark: one full `etl run` cycle of the whole portal, scrape to publish (target 15 s).

    python -m bench.cycle [--repeat N] [--warehouse URL]

The replica (its own process) shows the final kg2021 snapshot; each repeat starts from an
empty data directory and runs `python -m etl run` as a user would (a new process, so
imports and the Great Expectations context are paid every time), into a fresh DuckDB file
unless --warehouse is given. Reports the wall time of the whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import save_report
from etl.replica.process import replica_process

TARGET_SECONDS = 15.0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and save) its figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warehouse", default=None, help="default: a fresh DuckDB file per run")
    args = parser.parse_args(argv)
    seconds = []
    with replica_process(at="final") as base_url:
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-cycle-") as tmp:
                warehouse = args.warehouse or f"duckdb:///{tmp}/warehouse.duckdb"
                env = os.environ | {"CEC_DATA_DIR": tmp}
                started = time.perf_counter()
                run = subprocess.run(
                    [sys.executable, "-m", "etl", "run", "--portal", base_url, "--election",
                     "jk2021", "--warehouse", warehouse],
                    env=env, capture_output=True, text=True, check=False)
                seconds.append(round(time.perf_counter() - started, 3))
                if run.returncode != 0:
                    print(run.stdout[-2000:], run.stderr[-2000:], file=sys.stderr)
                    return 1
    median = statistics.median(seconds)
    report = {"benchmark": "python -m etl run, whole kg2021 portal (final snapshot), scrape to publish",
              "warehouse": args.warehouse or "fresh DuckDB file", "seconds": seconds,
              "median_seconds": median, "target_seconds": TARGET_SECONDS,
              "meets_target": median <= TARGET_SECONDS}
    save_report("cycle", report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
