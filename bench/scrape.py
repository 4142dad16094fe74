"""Benchmark: full scrape + normalise of the final kg2021 snapshot from the local replica.

    python -m bench.scrape [--repeat N] [--processes P] [--concurrency C]

The replica runs in its own process (as the real portal would); each repeat scrapes the
whole `ru` portal into a fresh raw archive (no conditional-request shortcuts) and writes
the snapshot directory. Reports pages, bytes, wall seconds, pages per second and peak
memory (this process and its parser processes). Target: <= 10 s on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import save_report
from etl import config
from etl.replica.process import replica_process
from etl.scrape import scrape

TARGET_SECONDS = 10.0


def scrape_once(base_url: str, processes: int, concurrency: int) -> dict[str, Any]:
    """One cold scrape of the whole portal; its figures."""
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        started = time.perf_counter()
        summary = scrape(base_url, "jk2021", Path(tmp) / "snapshot", archive_root=Path(tmp) / "raw",
                         processes=processes, concurrency=concurrency)
        seconds = time.perf_counter() - started
        raw_bytes = sum(p.stat().st_size for p in (Path(tmp) / "raw" / "blobs").rglob("*")
                        if p.is_file())
    pages = summary.meta["pages_fetched"] + summary.meta["pages_not_modified"]
    return {"pages": pages, "failed": summary.meta["pages_failed"], "bytes": raw_bytes,
            "seconds": round(seconds, 3), "pages_per_second": round(pages / seconds, 1),
            "rows": summary.rows}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and save) its figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, default=config.crawl_processes())
    parser.add_argument("--concurrency", type=int, default=config.concurrency())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with replica_process(at="final") as base_url:
        scrape_once(base_url, args.processes, args.concurrency)  # warm the replica's page cache
        runs = [scrape_once(base_url, args.processes, args.concurrency) for _ in range(args.repeat)]
    peak_mib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    median = statistics.median(run["seconds"] for run in runs)
    report = {
        "benchmark": "scrape+normalise of the final kg2021 snapshot (ru), cold archive",
        "processes": args.processes, "concurrency": args.concurrency,
        "pages": runs[0]["pages"], "failed": runs[0]["failed"], "bytes": runs[0]["bytes"],
        "rows": runs[0]["rows"], "seconds": [run["seconds"] for run in runs],
        "median_seconds": median, "pages_per_second": round(runs[0]["pages"] / median, 1),
        "peak_rss_mib": round(peak_mib, 1), "target_seconds": TARGET_SECONDS,
        "meets_target": median <= TARGET_SECONDS,
    }
    save_report("scrape", report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
