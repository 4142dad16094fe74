"""Benchmark: validate one final-size snapshot with the quality gate (target 3 s).

    python -m bench.validate [--snapshot-dir DIR] [--previous DIR] [--repeat N]

Without --snapshot-dir a synthetic kg2021-sized snapshot is generated (the party list over
2,500 precincts in 10 regions and 50 districts, and 36 single-mandate contests: about
5,100 divisions and 71,000 result rows) with a previous snapshot at 95% counted, so that
W2 and W4 run too. Each repeat times the whole `validate_snapshot` call: reading the
parquet files, every check, writing `dq_results.parquet` and the HTML report. The one-off
cost of importing Great Expectations and creating its context is reported apart: a
long-lived worker pays it once, a `python -m etl validate` process once per run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bench import save_report
from etl.quality import validate_snapshot
from tests.synthetic import make_consistent_election

log = logging.getLogger("bench.validate")

TARGET_SECONDS = 3.0
FINAL_SIZE: dict[str, Any] = {
    "n_lines": 21,
    "regions": 10,
    "districts_per_region": 5,
    "precincts_per_district": 50,
    "okrugs": 36,
    "candidates_per_okrug": 5,
}


def synthetic_dirs(root: Path) -> tuple[Path, Path]:
    """Write a final-size snapshot and its predecessor under `root`; return both dirs."""
    current = make_consistent_election(2021, counted_fraction=1.0, **FINAL_SIZE)
    previous = make_consistent_election(2021, counted_fraction=0.95, **FINAL_SIZE)
    return current.write(root / "final"), previous.write(root / "previous")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and record the timings; 0 when the target is met."""
    parser = argparse.ArgumentParser(prog="python -m bench.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot-dir", type=Path, default=None)
    parser.add_argument("--previous", type=Path, default=None,
                        help="previous snapshot dir (default: none, or the synthetic one)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        work = Path(tmp)
        if args.snapshot_dir is None:
            snapshot_dir, previous_dir = synthetic_dirs(work)
        else:
            snapshot_dir, previous_dir = args.snapshot_dir, args.previous
        # validate_snapshot writes dq_results.parquet into the directory it validates.
        started = time.perf_counter()
        from etl.quality.suites import suite_runner

        suite_runner()
        startup = time.perf_counter() - started

        timings = []
        outcome = None
        for _ in range(max(1, args.repeat)):
            started = time.perf_counter()
            outcome = validate_snapshot(snapshot_dir, previous_dir, work / "reports")
            timings.append(time.perf_counter() - started)
        assert outcome is not None
        dq = outcome.dq_results
        frames = {
            name: len(pd.read_parquet(snapshot_dir / f"{name}.parquet", columns=["division_id"]))
            for name in ("divisions", "results")
        }
    summary: dict[str, Any] = {
        "snapshot": str(args.snapshot_dir or "synthetic final-size"),
        "previous": str(previous_dir) if previous_dir else None,
        "divisions": frames["divisions"],
        "result_rows": frames["results"],
        "gx_import_and_context_s": round(startup, 3),
        "validate_s": [round(t, 3) for t in timings],
        "validate_median_s": round(statistics.median(timings), 3),
        "failure_rows": int(dq["division_id"].notna().sum()),
        "critical_contests": sorted(outcome.critical_contests),
        "target_s": TARGET_SECONDS,
    }
    results_file = save_report("validate", summary)
    print(
        f"validate {summary['snapshot']}: median {summary['validate_median_s']:.2f} s over "
        f"{len(timings)} runs (each {', '.join(f'{t:.2f}' for t in timings)}); GX import and "
        f"context once per process {startup:.2f} s; target {TARGET_SECONDS:.1f} s; "
        f"{summary['failure_rows']} failure rows; written {results_file}"
    )
    return 0 if summary["validate_median_s"] <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
