"""Benchmark: validate one snapshot with the quality gate; wall, CPU seconds and peak RSS.

    python -m bench.validate [--snapshot-dir DIR] [--previous DIR] [--precincts N]
                             [--previous-counted F] [--repeat N] [--profile FILE] [--memo]

Without --snapshot-dir a synthetic snapshot is generated (`tests/synthetic.py`):
kg2021's final size by default (the party list over 2,500 precincts in 10 regions and 50
districts, and 36 single-mandate contests: about 5,100 divisions and 71,000 result rows),
or with --precincts N a party list of 18 parties + against all over N precincts in 20
regions of 50 districts (the 100,000-precinct portal of issue 9: ~101,000 divisions,
~1.9 M result rows). Its previous snapshot has --previous-counted of the precincts
counted (default 0.95, so W2 and W4 compare real changes; 1.0 is a re-stamp: the same
figures under another snapshot id). The snapshots are generated in a child process, so
the figures below are those of a process that only validates.

Each repeat times the whole `validate_snapshot` call: reading the parquet files (the
previous snapshot's too), every check, writing `dq_results.parquet` and the HTML report;
per repeat: wall seconds, CPU seconds (user + sys) and the process's peak RSS during the
call (the kernel's high-water mark, reset before each repeat). The one-off cost of
importing Great Expectations and creating its context is reported apart: a long-lived
worker (and `etl run`, which warms it during the crawl) pays it once.

With --memo the validations keep a gate memo (`etl.quality.memo`, as `etl run` does): the
first repeat validates with GX and fills it (the digests' cost included), the next ones
validate the same frames again, as after a re-stamp of the portal (with --previous-counted
1.0 the cross-snapshot frames are empty too), and take every outcome from it.

Targets: ≤ 3 s at kg2021 size; peak RSS ≤ 2 GiB (issue 9's budget for the whole process
tree, which the gate must leave room in). Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bench import save_report
from etl.memory import process_memory_mib
from etl.quality import validate_snapshot

log = logging.getLogger("bench.validate")

TARGET_SECONDS = 3.0
TARGET_PEAK_MIB = 2048
SCALE_ROWS = 500_000  # result rows from which a snapshot is issue 9's scale, not kg2021's
FINAL_SIZE: dict[str, Any] = {
    "n_lines": 21,
    "regions": 10,
    "districts_per_region": 5,
    "precincts_per_district": 50,
    "okrugs": 36,
    "candidates_per_okrug": 5,
}


def synthetic_size(precincts: int | None) -> dict[str, Any]:
    """Generator arguments: kg2021's final size, or the scale portal with `precincts`."""
    if precincts is None:
        return dict(FINAL_SIZE)
    return {
        "n_lines": 18,
        "regions": 20,
        "districts_per_region": 50,
        "precincts_per_district": max(1, round(precincts / 1000)),
        "okrugs": 0,
    }


def synthetic_dirs(
    root: Path, precincts: int | None = None, previous_counted: float = 0.95
) -> tuple[Path, Path]:
    """Write a final snapshot and its predecessor under `root`; return both dirs."""
    from tests.synthetic import make_consistent_election

    size = synthetic_size(precincts)
    current = make_consistent_election(2021, counted_fraction=1.0, **size)
    current_dir = current.write(root / "final")
    del current
    previous = make_consistent_election(
        2021, counted_fraction=previous_counted, **size,
        snapshot_id=f"jk2021-2021-previous-{round(previous_counted * 1000):04d}",
    )
    return current_dir, previous.write(root / "previous")


def _generate(root: str, precincts: int | None, previous_counted: float) -> tuple[str, str]:
    current, previous = synthetic_dirs(Path(root), precincts, previous_counted)
    return str(current), str(previous)


def _peak_rss_reset() -> bool:
    """Reset this process's RSS high-water mark (Linux); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mib() -> float:
    """This process's RSS high-water mark (since the last reset) in MiB."""
    peak = process_memory_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    current = process_memory_mib("VmRSS")
    return current if current is not None else float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and record the figures; 0 when the targets are met."""
    parser = argparse.ArgumentParser(prog="python -m bench.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot-dir", type=Path, default=None)
    parser.add_argument("--previous", type=Path, default=None,
                        help="previous snapshot dir (default: none, or the synthetic one)")
    parser.add_argument("--precincts", type=int, default=None,
                        help="precincts of the synthetic snapshot (default: kg2021's 2,500)")
    parser.add_argument("--previous-counted", type=float, default=0.95,
                        help="share of precincts counted in the synthetic previous snapshot "
                        "(default 0.95; 1.0 = a re-stamp, same figures)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile of the last repeat to this file")
    parser.add_argument("--memo", action="store_true",
                        help="keep a gate memo across the repeats (see above)")
    parser.add_argument("--name", default=None,
                        help="results file name (default validate or validate-<precincts>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        work = Path(tmp)
        if args.snapshot_dir is None:
            started = time.perf_counter()
            # A child process, so that generating leaves nothing in this one's memory.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                current, previous = pool.apply(
                    _generate, (tmp, args.precincts, args.previous_counted))
            snapshot_dir, previous_dir = Path(current), Path(previous)
            log.warning("generated the snapshots in %.1fs", time.perf_counter() - started)
        else:
            snapshot_dir, previous_dir = args.snapshot_dir, args.previous
        # validate_snapshot writes dq_results.parquet into the directory it validates.
        started = time.perf_counter()
        from etl.quality.suites import suite_runner

        suite_runner().warm()
        startup = time.perf_counter() - started
        rss_before = _rss_mib()

        timings: list[float] = []
        cpu: list[float] = []
        peaks: list[float] = []
        outcome = None
        for repeat in range(max(1, args.repeat)):
            profiler = None
            if args.profile is not None and repeat == max(1, args.repeat) - 1:
                import cProfile

                profiler = cProfile.Profile()
            reset = _peak_rss_reset()
            cpu_started, started = _cpu_seconds(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            outcome = validate_snapshot(snapshot_dir, previous_dir, work / "reports",
                                        memo_path=work / "gate-memo.json" if args.memo else None)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(args.profile))
            timings.append(time.perf_counter() - started)
            cpu.append(_cpu_seconds() - cpu_started)
            peaks.append(_peak_rss_mib() if reset or not peaks else float("nan"))
        assert outcome is not None
        dq = outcome.dq_results
        frames = {
            name: len(pd.read_parquet(snapshot_dir / f"{name}.parquet", columns=["division_id"]))
            for name in ("divisions", "results")
        }
    peak = max(peaks)
    summary: dict[str, Any] = {
        "snapshot": str(args.snapshot_dir or f"synthetic, {args.precincts or 2500} precincts"),
        "previous": str(args.previous) if args.previous else (
            None if args.snapshot_dir else f"synthetic, {args.previous_counted:.0%} counted"),
        "divisions": frames["divisions"],
        "result_rows": frames["results"],
        "gx_import_and_context_s": round(startup, 3),
        "gate_memo": args.memo,
        "validate_s": [round(t, 3) for t in timings],
        "validate_median_s": round(statistics.median(timings), 3),
        "validate_cpu_s": [round(t, 3) for t in cpu],
        "validate_cpu_median_s": round(statistics.median(cpu), 3),
        "rss_before_mib": round(rss_before),
        "peak_rss_mib": [round(p) for p in peaks],
        "process_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "failure_rows": int(dq["division_id"].notna().sum()),
        "critical_contests": sorted(outcome.critical_contests),
        # The time target is kg2021's (issue 8); at scale only the memory budget applies.
        "target_s": TARGET_SECONDS if frames["results"] < SCALE_ROWS else None,
        "target_peak_rss_mib": TARGET_PEAK_MIB,
    }
    results_file = save_report(
        args.name or (f"validate-{args.precincts}" if args.precincts else "validate"), summary)
    met_time = summary["target_s"] is None or summary["validate_median_s"] <= TARGET_SECONDS
    met_memory = peak <= TARGET_PEAK_MIB
    print(
        f"validate {summary['snapshot']} ({frames['divisions']} divisions, "
        f"{frames['results']} result rows; previous {summary['previous']}): median "
        f"{summary['validate_median_s']:.2f} s wall, {summary['validate_cpu_median_s']:.2f} "
        f"CPU-s over {len(timings)} runs (each {', '.join(f'{t:.2f}' for t in timings)}); "
        f"peak RSS {peak:.0f} MiB (before {rss_before:.0f} MiB); GX import and context once "
        f"per process {startup:.2f} s; load average {os.getloadavg()[0]:.1f}; "
        f"{summary['failure_rows']} failure rows; written {results_file}"
    )
    return 0 if met_time and met_memory else 1


if __name__ == "__main__":
    sys.exit(main())
