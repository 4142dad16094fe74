"""Benchmark: whole-portal `etl run` cycles, cold and incremental (targets 5 s, 1.5 s, 2 s).

    python -m bench.cycle [--repeat N] [--mode cold,restamp,changed] [--runner run,watch]
                          [--warehouse URL]

The replica (its own process) serves the kg2021 portal. Two runners, each figure into a
fresh DuckDB file unless --warehouse:

- run: the wall time of `python -m etl run` as a user runs it (a new process: imports and
  the Great Expectations context are paid every time);
- watch: `python -m etl watch --interval 0.2`, one process that imports once and forks a
  child per cycle; the figure is the timed cycle's, from its fork to its end (what the
  runner prints), so its polling interval is not in it.

The modes:

- cold: the final snapshot, empty data directory;
- restamp: after a completed cycle of the final snapshot, every page re-stamped and
  nothing else changed (the replica's `/_replica/restamp` control, a new time each run);
- changed: after a completed cycle of `preliminary`, the portal moves to `counting-5`
  (late automatic counts: 141 of 2,494 precincts, 5.7%, and their parents change).

Before an incremental cycle the replica renders the pages it will serve changed, untimed
(`prerender`): a real portal renders on its own machines, not on the pipeline's cores.
Without that, the first run of each mode paid the replica's rendering and later runs
found its cache warm, so the runs of one figure were not alike. The cold cycles' replica
renders on demand (the first cold run's pages; later ones are cached).

Each figure is the median of --repeat runs, each from its own empty data directory (the
incremental ones after an untimed first cycle; a watch runner of its own each time), the
runners interleaved.
Prints the load average beside them, the CPU seconds of the cycle (its worker processes
included) and those of the replica during the cycle (it shares the machine's cores:
serving the pages, their rendering ahead not counted).
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
from collections.abc import Callable
from typing import Any

from bench import save_report
from etl.replica.process import control, replica_process
from etl.runner import CYCLE_LINE

TARGETS = {"cold": 5.0, "restamp": 1.5, "changed": 2.0}


def children_cpu_seconds() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def replica_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by the replica (this process's child running
    `etl.replica`; a watch runner may be another child)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children():
        if "etl.replica" in child.cmdline():
            times = child.cpu_times()
            total += times.user + times.system
    return total


def etl_run(base_url: str, data_dir: str, warehouse: str) -> tuple[float, str]:
    """Wall seconds and stdout of one `python -m etl run`; raises if it fails.

    The stdout ends with a line giving the CPU seconds the run used (its workers included):
    on a shared machine it moves less with the load than the wall time.
    """
    cpu_before, replica_before = children_cpu_seconds(), replica_cpu_seconds()
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "etl", "run", "--portal", base_url, "--election", "jk2021",
         "--warehouse", warehouse],
        env=os.environ | {"CEC_DATA_DIR": data_dir}, capture_output=True, text=True,
        check=False)
    seconds = time.perf_counter() - started
    if run.returncode not in (0, 3):  # 3: a contest quarantined, still a whole cycle
        raise RuntimeError(f"etl run exited {run.returncode}:\n{run.stdout[-2000:]}\n"
                           f"{run.stderr[-2000:]}")
    cpu = children_cpu_seconds() - cpu_before
    replica = replica_cpu_seconds() - replica_before
    return round(seconds, 3), run.stdout + f"\nreplica_cpu_seconds {replica:.2f}\ncpu_seconds {cpu:.2f}\n"


def watched_cycles(base_url: str, data_dir: str, warehouse: str, cycles: int,
                   between: Callable[[], None]) -> tuple[float, str]:
    """Run `etl watch` for `cycles` cycles, calling `between` after each but the last; the
    last cycle's seconds and the runner's stdout (with the same CPU lines as `etl_run`)."""
    command = [sys.executable, "-m", "etl", "watch", "--portal", base_url, "--election",
               "jk2021", "--warehouse", warehouse, "--interval", "0.2", "--cycles", str(cycles)]
    lines: list[str] = []
    replica_before = replica_cpu_seconds()
    with open(f"{data_dir}.watch.log", "w") as log_file, subprocess.Popen(
            command, env=os.environ | {"CEC_DATA_DIR": data_dir}, stdout=subprocess.PIPE,
            stderr=log_file, text=True) as runner:
        try:
            assert runner.stdout is not None
            for line in runner.stdout:
                lines.append(line)
                done = CYCLE_LINE.match(line)
                if done and int(done[1]) == cycles - 1:
                    between()
                    replica_before = replica_cpu_seconds()  # its rendering ahead left out
            runner.wait(timeout=300)
        finally:
            if runner.poll() is None:
                runner.kill()
    outcomes = [m for m in map(CYCLE_LINE.match, lines) if m]
    # Every cycle completed: a failed first one would make its retry the timed one.
    if (runner.returncode not in (0, 3) or len(outcomes) != cycles
            or any(int(m[2]) not in (0, 3) for m in outcomes)):
        raise RuntimeError(f"etl watch exited {runner.returncode} after {len(outcomes)} "
                           f"cycles:\n{''.join(lines)[-2000:]}")
    replica = replica_cpu_seconds() - replica_before
    seconds, cpu = float(outcomes[-1][3]), float(outcomes[-1][4])
    return seconds, "".join(lines) + f"\nreplica_cpu_seconds {replica:.2f}\ncpu_seconds {cpu:.2f}\n"


def one_cycle(base_url: str, mode: str, warehouse_arg: str | None,
              runner: str = "run", run_number: int = 1) -> tuple[float, str]:
    """Set the portal up for `mode`, run the untimed first cycle if any, time the next.

    `run_number` makes each re-stamp a new time (its pages rendered ahead, not found in
    the replica's cache from an earlier run)."""
    def goto(label: str) -> None:
        control("POST", f"{base_url}/_replica/goto?label={label}")

    def change_to(label: str) -> None:
        control("POST", f"{base_url}/_replica/prerender?label={label}", timeout=120)
        goto(label)

    with tempfile.TemporaryDirectory(prefix=f"bench-cycle-{mode}-") as tmp:
        data, warehouse = f"{tmp}/data", warehouse_arg or f"duckdb:///{tmp}/warehouse.duckdb"
        steps: dict[str, tuple[str, Callable[[], None]]] = {
            "cold": ("final", lambda: None),
            "restamp": ("final", lambda: control(
                "POST", f"{base_url}/_replica/restamp?seconds={60 * run_number}&prerender=ru",
                timeout=120)),
            "changed": ("preliminary", lambda: change_to("counting-5")),
        }
        first, change = steps[mode]
        goto(first)
        if runner == "watch":
            return watched_cycles(base_url, data, warehouse, 1 if mode == "cold" else 2, change)
        if mode != "cold":
            etl_run(base_url, data, warehouse)
            change()
        return etl_run(base_url, data, warehouse)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and save) its figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", default="cold,restamp,changed")
    parser.add_argument("--runner", default="run,watch",
                        help="run (a new process a cycle) and/or watch (one warm process)")
    parser.add_argument("--warehouse", default=None, help="default: a fresh DuckDB file per run")
    args = parser.parse_args(argv)
    report: dict[str, object] = {
        "benchmark": "whole kg2021 portal, scrape to publish: `python -m etl run` (a new "
                     "process a cycle; keys cold, restamp, changed) and `python -m etl watch` "
                     "(a warm process forking a cycle; keys watch_cold, watch_restamp, ...)",
        "warehouse": args.warehouse or "fresh DuckDB file"}
    runners = args.runner.split(",")
    with replica_process(at="final") as base_url:
        for mode in args.mode.split(","):
            runs: dict[str, dict[str, list[Any]]] = {
                r: {"seconds": [], "cpu": [], "replica": [], "loads": [], "pages": []}
                for r in runners}
            for repeat in range(args.repeat):
                for number, runner in enumerate(runners):  # interleaved: drift hits both alike
                    key = mode if runner == "run" else f"{runner}_{mode}"
                    elapsed, stdout = one_cycle(base_url, mode, args.warehouse, runner,
                                                run_number=1 + repeat * len(runners) + number)
                    run = runs[runner]
                    run["seconds"].append(elapsed)
                    run["cpu"].append(float(stdout.rsplit("\ncpu_seconds ", 1)[1]))
                    run["replica"].append(
                        float(stdout.rsplit("replica_cpu_seconds ", 1)[1].split()[0]))
                    run["loads"].append(round(os.getloadavg()[0], 2))
                    run["pages"].append(([line.strip() for line in stdout.splitlines()
                                          if "division pages:" in line] or [""])[-1])  # timed one's
                    print(f"{key}: {elapsed:.2f}s wall, {run['cpu'][-1]:.1f} CPU-s (replica "
                          f"{run['replica'][-1]:.1f})  {run['pages'][-1]}  "
                          f"(load {run['loads'][-1]:.1f})", flush=True)
            for runner, run in runs.items():
                median = statistics.median(run["seconds"])
                report[mode if runner == "run" else f"{runner}_{mode}"] = {
                    "seconds": run["seconds"], "median_seconds": median,
                    "cpu_seconds": run["cpu"], "median_cpu_seconds": statistics.median(run["cpu"]),
                    "replica_cpu_seconds": run["replica"], "load_averages": run["loads"],
                    "target_seconds": TARGETS[mode], "meets_target": median <= TARGETS[mode],
                    "pages": run["pages"][0], "load_average": os.getloadavg()}
    save_report("cycle", report)
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
