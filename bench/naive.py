"""The naive anchor: how a straightforward scraper would read the portal into DuckDB.

    python -m bench.naive --portal URL --election jk2021 --out DIR

What a competent analyst writes in an afternoon, without the pipeline's machinery: one
`requests.get` per page, following the links breadth-first, one page at a time;
BeautifulSoup with the standard library's `html.parser`; the rows gathered into pandas
frames; then one `INSERT` per row into a DuckDB file. It reads the same figures the
pipeline reads (protocol, results, hierarchy) and prints how many rows it loaded and how
long it took. `python -m bench.compare` times it against `python -m etl run`.

Honest, not crippled: it keeps one DuckDB connection and one transaction, parses only
what it needs and never fetches a page twice; it has no archive, no quality gate, no
retries and no concurrency, which is what makes it naive.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import requests
from bs4 import BeautifulSoup

PROTOCOL_LABELS = {  # Russian row labels of the protocol table (SPEC.md section A)
    "внесенных в список": "registered",
    "получивших": "ballots_issued",
    "принявших участие": "ballots_cast",
    "недействительных": "invalid",
    "действительных": "valid",
    "явка": "turnout_pct_published",
    "обработано": "precincts",
}


def number(text: str) -> float | None:
    """`1 182 291`, `3,48%`, `—` -> 1182291.0, 3.48, None."""
    cleaned = "".join(text.replace("%", "").replace(",", ".").split())
    if cleaned in ("", "—", "-", "–"):
        return None
    return float(cleaned)


def read_division(soup: BeautifulSoup) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """One division page: its figures, its result rows and the links to its children."""
    heading = soup.find("h1")
    division: dict[str, Any] = {"name": heading.get_text(strip=True) if heading else None,
                                "level": heading.get("data-level") if heading else None,
                                "declared_id": heading.get("data-division-id") if heading else None}
    protocol = soup.find("table", class_="protocol")
    for row in protocol.find_all("tr") if protocol else []:
        label, value = (cell.get_text(strip=True) for cell in row.find_all(["th", "td"])[:2])
        for key, field in PROTOCOL_LABELS.items():
            if key in label.lower():
                if field == "precincts":
                    counted, _, total = value.partition(" из ")
                    division["precincts_counted"] = number(counted)
                    division["precincts_total"] = number(total)
                else:
                    division[field] = number(value)
                break
    results = []
    table = soup.find("table", class_="results")
    body = table.find("tbody") if table else None
    for row in body.find_all("tr") if body else []:
        position, name, votes, pct = (cell.get_text(strip=True) for cell in row.find_all("td"))
        against = "against-all" in (row.get("class") or [])
        results.append({"choice_position": None if against else int(position),
                        "choice_name": name, "is_against_all": against,
                        "votes": number(votes), "pct_published": number(pct)})
    children = []
    subdivisions = soup.find("table", class_="subdivisions")
    for link in subdivisions.find_all("a") if subdivisions else []:
        children.append(str(link["href"]))
    return division, results, children


def scrape(portal: str, election_id: str) -> dict[str, pd.DataFrame]:
    """Every division page of every contest, breadth-first, one page at a time."""
    election = BeautifulSoup(requests.get(f"{portal}/ru/results/{election_id}/", timeout=30).text,
                             "html.parser")
    divisions: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for contest in election.find_all("a", class_="contest"):
        contest_id = str(contest["data-contest"])
        queue: deque[tuple[str, str | None]] = deque([(str(contest["href"]), None)])
        while queue:
            href, parent_id = queue.popleft()
            response = requests.get(portal + href, timeout=30)
            response.raise_for_status()
            division, rows, children = read_division(BeautifulSoup(response.text, "html.parser"))
            declared_id = division.pop("declared_id")
            # A contest's root declares its id; every other division is its URL segment.
            division_id = declared_id if parent_id is None else href.rstrip("/").split("/")[-1]
            divisions.append({"contest_id": contest_id, "division_id": division_id,
                              "parent_id": parent_id, **division})
            results.extend({"contest_id": contest_id, "division_id": division_id, **row}
                           for row in rows)
            queue.extend((child, division_id) for child in children)
    return {"divisions": pd.DataFrame(divisions), "results": pd.DataFrame(results)}


def load(frames: dict[str, pd.DataFrame], database: Path) -> dict[str, int]:
    """One INSERT per row into DuckDB, in one transaction; rows loaded per table."""
    con = duckdb.connect(str(database))
    con.execute("BEGIN")
    counts = {}
    for name, frame in frames.items():
        columns = list(frame.columns)
        types = ["BOOLEAN" if frame[c].dtype == bool else "DOUBLE" if frame[c].dtype.kind == "f"
                 else "VARCHAR" for c in columns]
        con.execute(f"CREATE TABLE {name} ("
                    + ", ".join(f"{c} {t}" for c, t in zip(columns, types, strict=True)) + ")")
        insert = f"INSERT INTO {name} VALUES ({', '.join('?' for _ in columns)})"
        for row in frame.astype(object).where(frame.notna(), None).itertuples(index=False):
            con.execute(insert, list(row))
        counts[name] = len(frame)
    con.execute("COMMIT")
    con.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    """Scrape, load, print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--portal", required=True)
    parser.add_argument("--election", default="jk2021")
    parser.add_argument("--out", type=Path, required=True, help="directory for the DuckDB file")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames = scrape(args.portal.rstrip("/"), args.election)
    scraped = time.perf_counter() - started
    counts = load(frames, args.out / "naive.duckdb")
    print(json.dumps({"rows": counts, "scrape_seconds": round(scraped, 2),
                      "seconds": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
