"""Benchmark: `etl run` against a 100,000-precinct portal, cold then incremental.

    python -m bench.scale [--precincts 100000] [--seed S] [--processes N] [--concurrency N]
                          [--runner run,watch] [--repeat N] [--no-prerender]

The replica serves the `synthetic` scenario in a process of its own (its CPU is reported
apart). Cold cycle: snapshot `counting-complete`, an empty data directory, a fresh DuckDB
file, `python -m etl run` in a new process. Incremental cycle: the replica moves to
`final` (5% of the precincts recounted: ~5% of the pages change) and the cycle runs again
on a copy of the data directory and warehouse the cold cycle left, `--repeat` times per
runner, the runners interleaved: `etl run` (a new process; key `incremental`) and `etl
watch` (a new runner whose first poll starts the cycle after its warm-up; the figure is
the cycle's, fork to exit; key `incremental_watch`); each key holds the median run and
`all_seconds`. Before them, the replica renders the pages that change ahead
(`/_replica/prerender`, untimed): a real portal renders on its own machines, the replica
on the two cores the pipeline runs on (~1 s of them at 100,000 precincts); `--no-
prerender` leaves that rendering in the first incremental cycle, as before stop 22 (later
repeats find the pages rendered). For each cycle: wall seconds, seconds per stage (from
the run's own log lines), pages and pages/s of the crawl, rows, and the peak memory of the
whole `etl run` process tree, sampled every 0.2 s, two ways: the PSS of the process and
every child summed (a page shared by forked workers is divided among them: the tree's real
footprint, which the target is checked on) and their RSS summed (shared pages counted once
per process: an upper bound). Targets (issue 9): cold ≤ 180 s, peak ≤ 2 GiB, incremental ≤
20 s. The run raises CEC_MAX_PAGES and the deadlines (`SCALE_LIMITS`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

from bench import save_report
from etl.replica.process import control, replica_process
from etl.runner import CYCLE_LINE

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
_CYCLE_LOGGED = re.compile(r"etl\.runner: cycle \d+: exit")  # when `etl watch`'s cycle ended


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


def _stage_ends(log_text: str, stage_ends: Sequence[tuple[str, re.Pattern[str]]] = STAGE_ENDS
                ) -> dict[str, float]:
    """Epoch seconds at which each stage ended, from its log line's timestamp."""
    ends: dict[str, float] = {}
    for line in log_text.splitlines():
        stamp = LOG_TIME.match(line)
        if stamp is None:
            continue
        for stage, pattern in stage_ends:
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


def run_cycle(base_url: str, data_dir: Path, replica_pid: int, extra: list[str],
              runner: str = "run") -> dict[str, Any]:
    """One cycle, measured: `python -m etl run` in a new process, or (`runner` "watch") a
    new `python -m etl watch --cycles 1`, whose first poll starts the cycle after its
    warm-up; its wall and CPU seconds are then the cycle's as the runner prints them (fork
    to exit), the memory that of its whole tree (the warm process included)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"etl-{runner}-{time.time_ns()}.log"  # kept after the run, for a look
    replica = psutil.Process(replica_pid)
    replica_cpu = sum(replica.cpu_times()[:2])
    # CPU of `etl run` and every worker it reaped (they are all reaped when it exits):
    # unlike wall time, it hardly depends on what else the machine is doing.
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    started = time.time()
    options = ["--interval", "0.5", "--cycles", "1"] if runner == "watch" else []
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(_etl_command(runner, base_url, data_dir, [*options, *extra]),
                                   env=_etl_env(data_dir), stdout=log_file,
                                   stderr=subprocess.STDOUT)
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
        raise RuntimeError(f"etl {runner} exited with {code}; log: {log_path}")
    if runner == "watch":  # the cycle's figures, not the runner's warm-up and exit
        [cycle] = CYCLE_LINE.findall(log_text)
        ended = _stage_ends(log_text, [("cycle", _CYCLE_LOGGED)])["cycle"]
        started, cpu_seconds = ended - float(cycle[2]), float(cycle[3])
    return _cycle_figures(data_dir, log_text, started, ended, cpu_seconds, memory,
                          sum(replica.cpu_times()[:2]) - replica_cpu, load_before) | {
        "log": str(log_path), "runner": f"etl {runner}"}


def _etl_command(command: str, base_url: str, data_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "etl", command, "--portal", base_url, "--election", ELECTION,
            "--warehouse", f"duckdb:///{data_dir}/warehouse.duckdb", *extra]


def _etl_env(data_dir: Path) -> dict[str, str]:
    return os.environ | {"CEC_DATA_DIR": str(data_dir), "CEC_ELECTIONS_DIR": str(ELECTIONS_DIR),
                         **SCALE_LIMITS}


def _cycle_figures(data_dir: Path, log_text: str, started: float, ended: float,
                   cpu_seconds: float, memory: TreeMemory, replica_cpu: float,
                   load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What the report says of one cycle, given its log lines and what was sampled."""
    ends = _stage_ends(log_text)
    stages = _stage_seconds(ends, started, ended)
    figures = _snapshot_figures(data_dir, log_text)
    pages = figures.get("pages_fetched", 0) + figures.get("pages_not_modified", 0)
    crawl = stages.get("crawl")
    return {
        "seconds": round(ended - started, 2),
        "cpu_seconds": round(cpu_seconds, 1),
        "stages": stages,
        **figures,
        "pages": pages,
        "pages_per_second": round(pages / crawl, 1) if crawl else None,
        "peak_tree_pss_mib": round(memory.peak_pss / 2**20, 1),
        "peak_tree_rss_mib": round(memory.peak / 2**20, 1),
        "peak_pss_stage": _stage_at(ends, memory.peak_pss_at),
        "memory_samples": memory.samples,
        "replica_cpu_seconds": round(replica_cpu, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
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
    parser.add_argument("--runner", default="run,watch",
                        help="incremental cycles by run (`etl run`, a new process a cycle) "
                             "and/or watch (one `etl watch` process, a forked cycle)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="incremental cycles per runner, each from a copy of the data "
                             "directory the cold cycle left")
    parser.add_argument("--no-prerender", dest="prerender", action="store_false",
                        help="the replica renders the changed pages during the timed cycle")
    args = parser.parse_args(argv)
    runners = args.runner.split(",")
    if not set(runners) <= {"run", "watch"}:
        parser.error("--runner: run, watch or run,watch")
    extra = []
    if args.processes:
        extra += ["--processes", str(args.processes)]
    if args.concurrency:
        extra += ["--concurrency", str(args.concurrency)]
    report: dict[str, Any] = {
        "benchmark": f"python -m etl run against the synthetic portal of {args.precincts:,} "
                     "precincts: cold, then incremental (5% of precincts recounted), also by "
                     "`etl watch` (key incremental_watch) as --runner says",
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

        def prerender() -> None:
            if args.prerender:
                started = time.perf_counter()
                rendered = control("POST", f"{base_url}/_replica/prerender?label=final",
                                   timeout=600)
                report["replica_prerendered"] = {**rendered,
                                                 "seconds": round(time.perf_counter() - started, 2)}

        report["cold"] = run_cycle(base_url, data_dir, replica_pid, extra)
        print(json.dumps({"cold": report["cold"]}, indent=1), flush=True)
        after_cold = Path(tmp) / "after-cold"
        shutil.copytree(data_dir, after_cold)  # each incremental cycle starts from it
        prerender()
        control("POST", f"{base_url}/_replica/goto?label=final")
        runs: dict[str, list[dict[str, Any]]] = {runner: [] for runner in runners}
        for _ in range(args.repeat):
            for runner in runners:  # interleaved: the machine's drift hits both alike
                shutil.rmtree(data_dir)
                shutil.copytree(after_cold, data_dir)
                runs[runner].append(run_cycle(base_url, data_dir, replica_pid, extra, runner))
                print(f"incremental ({runner}): {runs[runner][-1]['seconds']:.2f}s", flush=True)
        for runner, figures in runs.items():
            ranked = sorted(figures, key=lambda figure: figure["seconds"])
            key = "incremental" if runner == "run" else f"incremental_{runner}"
            report[key] = ranked[len(ranked) // 2] | {  # the median run (upper middle if even)
                "all_seconds": [figure["seconds"] for figure in figures]}
        report["replica_rss_mib_at_end"] = round(psutil.Process(replica_pid).memory_info().rss
                                               / 2**20, 1)
    cycles = [report["cold"], *(figure for figures in runs.values() for figure in figures)]
    report["meets_targets"] = {
        "cold": report["cold"]["seconds"] <= TARGET_COLD_SECONDS,
        "peak_memory": max(c["peak_tree_pss_mib"] for c in cycles) <= TARGET_PEAK_BYTES / 2**20,
        **{key: report[key]["seconds"] <= TARGET_INCREMENTAL_SECONDS
           for key in ("incremental", "incremental_watch") if key in report},
    }
    save_report(args.name, report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
