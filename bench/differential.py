"""Differential check: the lxml fast path and BeautifulSoup read every replica page alike.

    python -m bench.differential [--snapshots all|LABEL,LABEL…] [--processes N]

Renders every division page (ru and kg) of the chosen replica snapshots (default: all 19)
and asserts that `etl.fastparse.parse_division_page` gives exactly what the parser of
record (`etl.parse.parse_division`) gives — the same records or the same error — on each.
Pages that differ from an already checked one only in their `updated` stamp are checked
once per stamp-free body. tests/test_fastparse.py runs the same comparison on a subset
(the whole suite would otherwise spend minutes rendering 190,000 pages).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench import save_report
from etl.fastparse import NotSpecShaped, parse_division_fast, parse_division_page
from etl.pagecache import page_key
from etl.parse import PageParseError, parse_division
from etl.replica.render import PortalRenderer
from etl.replica.scenario import Scenario, load_scenario

BASE = "http://127.0.0.1:8765"


def replica_pages(scenario: Scenario, index: int,
                  contests: Sequence[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(URL, body) of every page of snapshot `index`: election pages and division pages."""
    renderer = PortalRenderer(scenario)
    for lang in ("ru", "kg"):
        for contest_id, contest in scenario.contests.items():
            if contests and contest_id not in contests:
                continue
            for division_id in contest.divisions:
                path = f"/{lang}/results/{scenario.election_id}/{contest_id}/{division_id}/"
                page = renderer.render(index, path)
                assert page is not None, path
                yield BASE + path, page.body


def record_of_record(html: bytes, url: str) -> object:
    """What the parser of record makes of a page: its records, or its error's text."""
    try:
        return parse_division(html, url)
    except PageParseError as exc:
        return f"{type(exc).__name__}: {exc}"


def fast_or_fallback(html: bytes, url: str) -> tuple[object, bool]:
    """What the crawl's dispatch makes of a page, and whether the fast path read it."""
    try:
        page, fell_back = parse_division_page(html, url)
    except PageParseError as exc:
        return f"{type(exc).__name__}: {exc}", False
    return page, not fell_back


def compare(pages: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """Compare both paths on each page; count the pages, the fast ones, list mismatches."""
    mismatches: list[str] = []
    fast = 0
    for url, html in pages:
        expected = record_of_record(html, url)
        got, was_fast = fast_or_fallback(html, url)
        fast += was_fast
        if got != expected:
            mismatches.append(f"{url}: record {expected!r} != dispatch {got!r}")
        if was_fast:
            try:
                parse_division_fast(html, url)
            except NotSpecShaped:
                mismatches.append(f"{url}: the fast path is not deterministic")
    return {"pages": len(pages), "fast": fast, "mismatches": mismatches}


def _check_snapshot(index: int) -> dict[str, Any]:
    scenario = load_scenario("kg2021")
    seen: set[str] = set()
    distinct: list[tuple[str, bytes]] = []
    total = 0
    for url, html in replica_pages(scenario, index):
        total += 1
        keyed = page_key(url, html)
        if keyed is not None:
            # The stamp is read the same way on every page: one page per stamp-free body.
            if keyed.key in seen:
                continue
            seen.add(keyed.key)
        distinct.append((url, html))
    result = compare(distinct)
    result.update(label=scenario.snapshots[index].label, rendered=total)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the check and print (and save) its figures; exit 1 on any mismatch."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshots", default="all")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    scenario = load_scenario("kg2021")
    indexes = (list(range(len(scenario.snapshots))) if args.snapshots == "all"
               else [scenario.resolve(label) for label in args.snapshots.split(",")])
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.processes) as pool:
        results = list(pool.map(_check_snapshot, indexes))
    mismatches = [m for r in results for m in r["mismatches"]]
    report = {
        "benchmark": "fast path vs BeautifulSoup on every division page of replica snapshots",
        "snapshots": [r["label"] for r in results],
        "pages_rendered": sum(r["rendered"] for r in results),
        "pages_compared": sum(r["pages"] for r in results),
        "pages_read_by_fast_path": sum(r["fast"] for r in results),
        "mismatches": len(mismatches), "first_mismatches": mismatches[:10],
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_report("differential", report)
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
