"""Benchmark: rows the warehouse stores after a whole election night (target: `results` ≤ 3×
one full snapshot).

    python -m bench.storage [--snapshot-dirs DIR] [--contests list,okrug-1,...] [--warehouse URL]

Without --snapshot-dirs the kg2021 replica's 19 moments are scraped over HTTP (every
contest unless --contests), each validated against the previous published snapshot and
loaded, as `etl run` does (the two withdrawn moments give no snapshot). With
--snapshot-dirs, every snapshot directory under DIR (e.g. `data/staging/jk2021` after
`make run`) is loaded in portal-time order. Prints and saves (bench/results/storage.json)
the rows each versioned table holds, the rows of the largest snapshot, and the rows a
full copy per snapshot would hold.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import save_report
from etl.normalise import SNAPSHOT_META_FILE, read_snapshot_meta
from etl.warehouse import load_snapshot
from etl.warehouse.backends import connect

log = logging.getLogger("bench.storage")
TARGET_RATIO = 3.0
TABLES = ("divisions", "turnout", "results")


def replay_replica(root: Path, warehouse_url: str, contests: list[str] | None) -> list[Path]:
    """Scrape, validate and load every moment of the kg2021 replica; the snapshot dirs."""
    from etl.cycle import validate_stage
    from etl.fetch import FetchError
    from etl.parse import PortalMaintenance
    from etl.replica import load_scenario
    from etl.replica.server import ReplicaServer
    from etl.scrape import scrape

    os.environ["CEC_RETRIES"] = "0"  # the withdrawn-503 moment fails at once
    dirs = []
    with ReplicaServer("kg2021") as server:
        for snapshot in load_scenario("kg2021").snapshots:
            server.goto(snapshot.index)
            out = root / f"{snapshot.index:02d}-{snapshot.label}"
            started = time.perf_counter()
            try:
                scrape(server.base_url, "jk2021", out, contests=contests,
                       archive_root=root / "raw")
            except (PortalMaintenance, FetchError) as error:
                log.info("%s: no snapshot (%s)", snapshot.label, type(error).__name__)
                continue
            validate_stage(out, warehouse_url)
            summary = load_snapshot(warehouse_url, out)
            log.info("%s: %s in %.1fs, results stored %d of %d", snapshot.label,
                     summary.statuses, time.perf_counter() - started,
                     summary.rows_stored["results"], summary.rows["results"])
            dirs.append(out)
    return dirs


def load_dirs(parent: Path, warehouse_url: str) -> list[Path]:
    """Load every snapshot directory under `parent`, oldest portal time first."""
    dirs = sorted(
        (p.parent for p in parent.rglob(SNAPSHOT_META_FILE)),
        key=lambda d: (read_snapshot_meta(d).get("portal_updated_at") or "", d.name),
    )
    for directory in dirs:
        load_snapshot(warehouse_url, directory)
    return dirs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when `results` holds more than 3× the largest snapshot."""
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot-dirs", type=Path, default=None,
                        help="load the snapshot directories under DIR instead of the replica")
    parser.add_argument("--contests", default=None,
                        help="comma-separated contests to scrape (default: all)")
    parser.add_argument("--warehouse", default=None,
                        help="warehouse URL (default: a new DuckDB file in a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("etl").setLevel(logging.WARNING)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cec-bench-storage-") as scratch:
        os.environ["CEC_DATA_DIR"] = str(Path(scratch) / "data")
        url = args.warehouse or f"duckdb:///{scratch}/warehouse.duckdb"
        if args.snapshot_dirs is not None:
            dirs = load_dirs(args.snapshot_dirs, url)
        else:
            contests = args.contests.split(",") if args.contests else None
            dirs = replay_replica(Path(scratch), url, contests)
        with connect(url) as db:
            snapshots = db.query("SELECT count(*) FROM snapshots")[0][0]
            figures = {}
            for table in TABLES:
                per_snapshot = db.query(
                    f"SELECT count(*) FROM {table}_by_snapshot GROUP BY snapshot_id")
                figures[table] = {
                    "stored": db.query(f"SELECT count(*) FROM {table}")[0][0],
                    "largest_snapshot": max(n for (n,) in per_snapshot),
                    "full_copies": sum(n for (n,) in per_snapshot),
                }
    results = figures["results"]
    ratio = results["stored"] / results["largest_snapshot"]
    report = {
        "source": str(args.snapshot_dirs or f"replica kg2021, contests {args.contests or 'all'}"),
        "snapshots_loaded": snapshots,
        "snapshot_dirs": len(dirs),
        "tables": figures,
        "results_ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    save_report("storage", report)
    for table, counts in figures.items():
        print(f"{table:10} stored {counts['stored']:>9,}  largest snapshot "
              f"{counts['largest_snapshot']:>8,}  full copies {counts['full_copies']:>10,}")
    print(f"{snapshots} snapshots; results stored = {ratio:.2f}x the largest snapshot "
          f"(target <= {TARGET_RATIO:.0f}x: {'met' if report['met'] else 'MISSED'}); "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
