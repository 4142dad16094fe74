"""Benchmark: `python -m etl run` against the naive anchor on the same portal (target ≤ 0.10).

    python -m bench.compare [--pairs N]

The replica (its own process) shows the final kg2021 snapshot (~5,000 `ru` pages). Each
pair runs, in turn, the naive scraper (`python -m bench.naive`: requests + html.parser +
pandas + one INSERT per row into DuckDB) and one full cycle (`python -m etl run`: scrape,
quality gate, load, alerts), each as a new process into an empty directory. Reports both
wall times per pair, their medians and the ratio of the medians (pipeline / naive).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from bench import save_report
from etl.replica.process import replica_process

TARGET_RATIO = 0.10


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (its child processes included) of a command that must
    succeed; on a shared machine the CPU figure moves less with the load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {run.returncode}:\n"
                           f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return round(seconds, 3), round(cpu, 2)


def main(argv: list[str] | None = None) -> int:
    """Run the pairs and print (and save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args(argv)
    naive, pipeline, naive_cpu, pipeline_cpu = [], [], [], []
    with replica_process(at="final") as base_url:
        for _ in range(args.pairs):
            with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
                wall, cpu = timed([sys.executable, "-m", "bench.naive", "--portal", base_url,
                                   "--election", "jk2021", "--out", f"{tmp}/naive"],
                                  dict(os.environ))
                naive.append(wall)
                naive_cpu.append(cpu)
                wall, cpu = timed(
                    [sys.executable, "-m", "etl", "run", "--portal", base_url, "--election",
                     "jk2021", "--warehouse", f"duckdb:///{tmp}/warehouse.duckdb"],
                    os.environ | {"CEC_DATA_DIR": f"{tmp}/data"})
                pipeline.append(wall)
                pipeline_cpu.append(cpu)
            print(f"pair: naive {naive[-1]:.1f}s ({naive_cpu[-1]:.1f} CPU-s), etl run "
                  f"{pipeline[-1]:.1f}s ({pipeline_cpu[-1]:.1f} CPU-s), load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    ratio = statistics.median(pipeline) / statistics.median(naive)
    report = {
        "benchmark": "etl run vs the naive scraper, final kg2021 portal, new process each",
        "naive_seconds": naive, "etl_run_seconds": pipeline,
        "naive_median_seconds": statistics.median(naive),
        "etl_run_median_seconds": statistics.median(pipeline),
        "naive_cpu_seconds": naive_cpu, "etl_run_cpu_seconds": pipeline_cpu,
        "ratio_of_medians": round(ratio, 3), "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "load_average": os.getloadavg(),
    }
    save_report("compare", report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
