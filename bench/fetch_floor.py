"""Benchmark: the CPU floor of fetching one page, part by part (issue 8).

    python -m bench.fetch_floor

The replica (its own process) serves the final kg2021 snapshot; every division page is
fetched once in one thread of this process by each client in turn, and the parts of a
cycle's per-page work are timed alone on the fetched bodies. Prints, per page, the wall
time, this process's CPU and the replica's CPU (it shares the machine's cores: a
re-stamp makes it render every page again). Writes bench/results/fetch_floor.json.
"""

from __future__ import annotations

import http.client
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests
import urllib3

from bench import save_report
from etl.archive import RawArchive
from etl.fastparse import parse_division_page
from etl.fetch import PortalClient
from etl.normalise import PAGE_SCHEMA, crawl_table
from etl.pagecache import (
    PLACE_COLUMNS,
    cacheable,
    page_key,
    read_pages,
    reused_row,
    with_reused,
    write_pages,
)
from etl.records import CrawledDivision, page_record
from etl.replica.process import control, free_port


def _replica(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "etl.replica", "--scenario", "kg2021",
                                "--port", str(port), "--at", "final"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            control("GET", f"http://127.0.0.1:{port}/_replica/state")
            return process
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the replica did not start")


def main() -> int:
    """Measure and print the per-page figures."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    replica = _replica(port)
    server = psutil.Process(replica.pid)
    tmp = Path(tempfile.mkdtemp(prefix="fetch-floor-"))
    report: dict[str, Any] = {"benchmark": "per-page CPU of fetching and its parts, one thread",
                              "load_average_before": os.getloadavg()}
    try:
        from etl.scrape import scrape

        urls = [p["url"] for p in scrape(base, "jk2021", tmp / "snapshot",
                                         archive_root=tmp / "raw-0").meta["pages"]]
        paths = [url.removeprefix(base) for url in urls]
        pages = len(paths)
        report["pages"] = pages

        def measure(name: str, run: Callable[[], Any], restamp: int | None = None) -> Any:
            if restamp is not None:
                control("POST", f"{base}/_replica/restamp?seconds={restamp}")
            server_cpu = sum(server.cpu_times()[:2])
            cpu, wall = time.process_time(), time.perf_counter()
            out = run()
            row = {"wall_ms": 1000 * (time.perf_counter() - wall) / pages,
                   "client_cpu_ms": 1000 * (time.process_time() - cpu) / pages,
                   "replica_cpu_ms": 1000 * (sum(server.cpu_times()[:2]) - server_cpu) / pages}
            report[name] = {k: round(v, 3) for k, v in row.items()}
            print(f"{name:46s} wall {row['wall_ms']:6.3f}  client CPU {row['client_cpu_ms']:6.3f}"
                  f"  replica CPU {row['replica_cpu_ms']:6.3f}  ms/page", flush=True)
            return out

        def plain_http_client() -> list[bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            bodies = []
            for path in paths:
                connection.request("GET", path)
                bodies.append(connection.getresponse().read())
            connection.close()
            return bodies

        def urllib3_pool() -> None:
            pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=4)
            for path in paths:
                response = pool.urlopen("GET", path, preload_content=False, redirect=False,
                                        retries=False, timeout=urllib3.Timeout(10, 10))
                while response.read1(65536):
                    pass
                response.release_conn()

        def requests_session() -> None:
            with requests.Session() as session:
                session.trust_env = False
                for path in paths:
                    response = session.get(base + path, stream=True, allow_redirects=False,
                                           timeout=(10, 10))
                    while response.raw.read1(65536):
                        pass
                    response.raw.release_conn()

        def portal_client(root: Path) -> Callable[[], None]:
            def run() -> None:
                client = PortalClient(base, RawArchive(root))
                for path in paths:
                    client.fetch(path)
                client.close()
            return run

        bodies = measure("http.client, replica renders (re-stamp)", plain_http_client, 60)
        measure("http.client", plain_http_client)
        measure("urllib3 pool", urllib3_pool)
        measure("requests session", requests_session)
        measure("PortalClient.fetch + archive, new bodies", portal_client(tmp / "raw-0"), 120)
        measure("PortalClient.fetch, 304 from the archive", portal_client(tmp / "raw-0"))

        def store() -> None:
            archive = RawArchive(tmp / "raw-store")
            headers = {"Content-Type": "text/html; charset=utf-8", "ETag": '"x"'}
            for url, body in zip(urls, bodies, strict=True):
                archive.store(url, 200, headers, body, "2021-12-15T16:00:00+00:00",
                              encoding="utf-8", encoding_source="header")

        measure("archive.store alone", store)
        keyed = measure("page_key alone", lambda: [
            page_key(u, b) for u, b in zip(urls, bodies, strict=True)])
        parsed = measure("fast parse alone", lambda: [
            parse_division_page(b, u, "utf-8")[0] for u, b in zip(urls, bodies, strict=True)])
        records = [page_record(p) for p in parsed]
        table = crawl_table((), [CrawledDivision("c", url, None, url, "-", record)
                                 for url, record in zip(urls, records, strict=True)]).pages
        cache = read_pages(write_pages(tmp / "pages.parquet", table, [
            k.key if k is not None and cacheable(k, p) else None
            for k, p in zip(keyed, parsed, strict=True)]))
        assert cache is not None

        def reuse_all() -> None:
            rows = [row for k in keyed if k and (row := reused_row(cache, k)) is not None]
            places = ["x"] * len(rows)
            with_reused(PAGE_SCHEMA.empty_table(), cache, rows,
                        dict.fromkeys(PLACE_COLUMNS, places), range(len(rows)))

        measure("reuse of cached pages alone (row lookup, then their columns)", reuse_all)
        measure("pickle round trip of a PageRecord", lambda: [
            pickle.loads(pickle.dumps(r)) for r in records])
        measure("pickle round trip of a DivisionPage", lambda: [
            pickle.loads(pickle.dumps(p)) for p in parsed])
    finally:
        replica.terminate()
        replica.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average_after"] = os.getloadavg()
    save_report("fetch_floor", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
