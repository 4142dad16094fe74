"""Benchmark: `etl run` against a 100,000-precinct portal, cold then incremental.

    python -m bench.scale [--precincts 100000] [--seed S] [--processes N] [--concurrency N]

The replica serves the `synthetic` scenario in a process of its own (its CPU is reported
apart). Cold cycle: snapshot `counting-complete`, an empty data directory, a fresh DuckDB
file, `python -m etl run` in a new process. Incremental cycle: the replica moves to
`final` (5% of the precincts recounted: ~5% of the pages change) and `etl run` runs again
on the same data directory and warehouse. For each cycle: wall seconds, seconds per stage
(from the run's own log lines), pages and pages/s of the crawl, rows, and the peak memory
of the whole `etl run` process tree, sampled every 0.2 s, two ways: the PSS of the process
and every child summed (a page shared by forked workers is divided among them: the tree's
real footprint, which the target is checked on) and their RSS summed (shared pages counted
once per process: an upper bound). Targets (issue 9): cold ≤ 180 s, peak ≤ 2 GiB,
incremental ≤ 20 s. The run raises CEC_MAX_PAGES and the deadlines (`SCALE_LIMITS`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

from bench import save_report
from etl.replica.process import control, replica_process

ELECTION = "synth2030"
ELECTIONS_DIR = Path(__file__).resolve().parent / "elections"
TARGET_COLD_SECONDS = 180.0
TARGET_INCREMENTAL_SECONDS = 20.0
TARGET_PEAK_BYTES = 2 * 2**30
SAMPLE_SECONDS = 0.2
CYCLE_DEADLINE_SECONDS = 3_600.0
# The defaults are sized for kg2021 (CEC_MAX_PAGES 20,000 pages, a 285 s cycle under a
# 5-minute schedule): a 100,000-precinct country has ~101,000 pages a language, which an
# operator sets as below. The deadlines are raised so that a cycle over the target is
# measured rather than cut off (the target is checked on the measured time).
SCALE_LIMITS = {"CEC_MAX_PAGES": "400000", "CEC_CRAWL_DEADLINE": "3000",
                "CEC_CYCLE_DEADLINE": "3300"}
LOG_DIR = Path(tempfile.gettempdir()) / "bench-scale-logs"

# (stage, the log line that ends it); a stage starts where the previous one ended.
STAGE_ENDS = (
    ("start_and_detect", re.compile(r"etl\.cycle: \S+: portal changed")),
    ("crawl", re.compile(r"etl\.crawl: crawled \d+ contests of")),
    ("assemble", re.compile(r"etl\.cycle: snapshot \S+ (assembled from|already assembled)")),
    ("validate", re.compile(r"etl\.cycle: snapshot \S+ validated:")),
    ("load", re.compile(r"etl\.warehouse\.load: snapshot \S+ (loaded into|is already in)")),
)
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class TreeMemory:
    """Samples the memory of a process and all its descendants until stopped.

    Two sums: RSS (a forked worker's pages shared with its parent count once per process:
    an upper bound) and PSS (each shared page divided among the processes that map it: the
    tree's actual footprint, what the target is checked on).
    """

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self.peak_pss = 0
        self.peak_pss_at = 0.0  # epoch seconds of the PSS peak's sample
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    full = process.memory_full_info()  # /proc/<pid>/smaps_rollup
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += full.rss
                pss += full.pss
            self.peak = max(self.peak, rss)
            if pss > self.peak_pss:
                self.peak_pss, self.peak_pss_at = pss, time.time()
            self.samples += 1
            self._stop.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        """Stop sampling (waits for the sampler thread)."""
        self._stop.set()
        self._thread.join(timeout=5)


def _stage_ends(log_text: str) -> dict[str, float]:
    """Epoch seconds at which each stage ended, from its log line's timestamp."""
    ends: dict[str, float] = {}
    for line in log_text.splitlines():
        stamp = LOG_TIME.match(line)
        if stamp is None:
            continue
        for stage, pattern in STAGE_ENDS:
            if stage not in ends and pattern.search(line):
                ends[stage] = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return ends


def _stage_at(ends: dict[str, float], moment: float) -> str:
    """The stage that was running at `moment` (epoch seconds), given `_stage_ends`."""
    for stage, end in sorted(ends.items(), key=lambda item: item[1]):
        if moment <= end:
            return stage
    return "alert_and_exit"


def _stage_seconds(ends: dict[str, float], started: float, ended: float) -> dict[str, float | None]:
    """Seconds per stage, given `_stage_ends`."""
    seconds: dict[str, float | None] = {}
    previous = started
    for stage, _ in STAGE_ENDS:
        if stage in ends:
            seconds[stage] = round(ends[stage] - previous, 2)
            previous = ends[stage]
        else:
            seconds[stage] = None
    seconds["alert_and_exit"] = round(ended - previous, 2)
    return seconds


def _snapshot_figures(data_dir: Path, log_text: str) -> dict[str, Any]:
    """Pages and rows of the snapshot this cycle assembled (from its directory)."""
    found = re.findall(r"etl\.cycle: snapshot (\S+) validated:", log_text)
    if not found:
        return {}
    snapshot_dir = data_dir / "staging" / ELECTION / "snapshots" / found[-1]
    meta = json.loads((snapshot_dir / "snapshot.json").read_text(encoding="utf-8"))
    rows = {name: pq.ParquetFile(snapshot_dir / f"{name}.parquet").metadata.num_rows
            for name in ("divisions", "turnout", "results")}
    return {"snapshot_id": meta["snapshot_id"], "pages_fetched": meta["pages_fetched"],
            "pages_not_modified": meta["pages_not_modified"], "pages_failed": meta["pages_failed"],
            "rows": rows}


def run_cycle(base_url: str, data_dir: Path, replica_pid: int, extra: list[str]) -> dict[str, Any]:
    """One `python -m etl run` in a new process, measured."""
    warehouse = f"duckdb:///{data_dir}/warehouse.duckdb"
    env = os.environ | {"CEC_DATA_DIR": str(data_dir), "CEC_ELECTIONS_DIR": str(ELECTIONS_DIR),
                        **SCALE_LIMITS}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"etl-run-{time.time_ns()}.log"  # kept after the run, for a look
    replica = psutil.Process(replica_pid)
    replica_cpu = sum(replica.cpu_times()[:2])
    # CPU of `etl run` and every worker it reaped (they are all reaped when it exits):
    # unlike wall time, it hardly depends on what else the machine is doing.
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    started = time.time()
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "etl", "run", "--portal", base_url, "--election", ELECTION,
             "--warehouse", warehouse, *extra],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid)
        try:
            code = process.wait(timeout=CYCLE_DEADLINE_SECONDS)
        finally:
            memory.stop()
            if process.poll() is None:
                process.kill()
    ended = time.time()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (children_after.ru_utime - children_before.ru_utime
                   + children_after.ru_stime - children_before.ru_stime)
    log_text = log_path.read_text(encoding="utf-8")
    if code != 0:
        print(log_text[-4000:], file=sys.stderr)
        raise RuntimeError(f"etl run exited with {code}; log: {log_path}")
    seconds = round(ended - started, 2)
    ends = _stage_ends(log_text)
    stages = _stage_seconds(ends, started, ended)
    figures = _snapshot_figures(data_dir, log_text)
    pages = figures.get("pages_fetched", 0) + figures.get("pages_not_modified", 0)
    crawl = stages.get("crawl")
    return {
        "seconds": seconds,
        "cpu_seconds": round(cpu_seconds, 1),
        "stages": stages,
        **figures,
        "pages": pages,
        "pages_per_second": round(pages / crawl, 1) if crawl else None,
        "peak_tree_pss_mib": round(memory.peak_pss / 2**20, 1),
        "peak_tree_rss_mib": round(memory.peak / 2**20, 1),
        "peak_pss_stage": _stage_at(ends, memory.peak_pss_at),
        "memory_samples": memory.samples,
        "replica_cpu_seconds": round(sum(replica.cpu_times()[:2]) - replica_cpu, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "log": str(log_path),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and save) its figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precincts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--processes", type=int, default=None, help="crawl processes")
    parser.add_argument("--concurrency", type=int, default=None, help="requests in flight")
    parser.add_argument("--name", default="scale", help="bench/results/<name>.json")
    args = parser.parse_args(argv)
    extra = []
    if args.processes:
        extra += ["--processes", str(args.processes)]
    if args.concurrency:
        extra += ["--concurrency", str(args.concurrency)]
    report: dict[str, Any] = {
        "benchmark": f"python -m etl run against the synthetic portal of {args.precincts:,} "
                     "precincts: cold, then incremental (5% of precincts recounted)",
        "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "targets": {"cold_seconds": TARGET_COLD_SECONDS, "peak_tree_pss_mib": TARGET_PEAK_BYTES / 2**20,
                    "incremental_seconds": TARGET_INCREMENTAL_SECONDS},
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, replica_process(
        scenario="synthetic", precincts=args.precincts, seed=args.seed, at="counting-complete",
        start_timeout=120.0,
    ) as base_url:
        replica_pid = next(
            p.pid for p in psutil.Process().children()
            if "etl.replica" in " ".join(p.cmdline())
        )
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        report["cold"] = run_cycle(base_url, data_dir, replica_pid, extra)
        print(json.dumps({"cold": report["cold"]}, indent=1), flush=True)
        control("POST", f"{base_url}/_replica/goto?label=final")
        report["incremental"] = run_cycle(base_url, data_dir, replica_pid, extra)
        report["replica_rss_mib_at_end"] = round(psutil.Process(replica_pid).memory_info().rss
                                               / 2**20, 1)
    cold, incremental = report["cold"], report["incremental"]
    report["meets_targets"] = {
        "cold": cold["seconds"] <= TARGET_COLD_SECONDS,
        "peak_memory": max(cold["peak_tree_pss_mib"], incremental["peak_tree_pss_mib"])
        <= TARGET_PEAK_BYTES / 2**20,
        "incremental": incremental["seconds"] <= TARGET_INCREMENTAL_SECONDS,
    }
    save_report(args.name, report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
