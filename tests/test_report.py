"""The election-night report: built from a real night (`etl run` cycles against the replica over
HTTP into DuckDB), then checked as files and in a real headless Chromium.

The night: counting-4, formula-error (149%, quarantined), withdrawn-503 (unavailable),
preliminary (86.96%), final, and final again (unchanged), for the party list and okrug-3.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from etl_process import etl_env, run_etl
from receivers import LoopbackHttpServer

from etl.archive import RawArchive
from etl.replica import ReplicaServer
from etl.replica.kg2021 import REGIONS
from etl.report.paths import snapshot_page_path
from etl.report.regions import ABROAD, GEOJSON_PATH, PORTAL_REGIONS, match_region, region_shapes
from etl.warehouse.backends import connect

# Six `etl run` cycles take about a minute on a quiet 2-core machine, many more on a busy one.
pytestmark = pytest.mark.timeout(2400)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
NIGHT = ["counting-4", "formula-error", "withdrawn-503", "preliminary", "final", "final"]
STATUSES = ["published", "quarantined", "unavailable", "published", "published", "unchanged"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass(frozen=True)
class Night:
    data: Path
    site: Path
    warehouse: str
    portal: str
    cycles: list[dict[str, Any]]
    report_stdout: str


def run_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_etl(*args, env=etl_env(data), timeout=600)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    data = tmp_path_factory.mktemp("report") / "data"
    warehouse = f"duckdb:///{data}/warehouse.duckdb"
    with ReplicaServer(scenario="kg2021", at=NIGHT[0], port=0) as replica:
        for label in NIGHT:
            replica.goto(label)
            run = run_cli(data, "run", "--portal", replica.base_url, "--election", "jk2021",
                          "--warehouse", warehouse, "--contest", "list", "--contest", "okrug-3")
            assert run.returncode in (0, 1, 3), run.stdout + run.stderr
        site = data / "site"
        report = run_cli(data, "report", "--election", "jk2021", "--out", str(site), "--warehouse", warehouse)
        assert report.returncode == 0, report.stdout + report.stderr
        cycles = [json.loads(line) for line in (data / "cycles.jsonl").read_text().splitlines()]
        yield Night(data, site, warehouse, replica.base_url, cycles, report.stdout)


class _Tables(HTMLParser):
    """Rows of the page's tables (cell texts) and every link's href."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links += [value or "" for name, value in attrs if name == "href"]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parsed(path: Path) -> _Tables:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def snapshot_of(night: Night, label_index: int) -> str:
    snapshot_id = night.cycles[label_index]["snapshot_id"]
    assert snapshot_id
    return str(snapshot_id)


# ----------------------------------------------------------------------------- the files


def test_night_index_has_one_row_per_run_with_the_incidents(night: Night) -> None:
    assert f"night index: {night.site / 'index.html'}" in night.report_stdout
    runs = parsed(night.site / "index.html").tables[-1]
    header, rows = runs[0], runs[1:]
    assert header[:6] == ["run", "portal time", "checked at (UTC)", "counted", "parties' sum", "status"]
    assert len(rows) == len(NIGHT)
    statuses = [row[5] for row in rows]
    assert [s.split(",")[-1].strip().split(" ")[-1] if s[0].isdigit() else s for s in statuses] == STATUSES
    parties = [row[4] for row in rows]
    assert parties[1].startswith("149.") and parties[3] == "86.96%"  # the spike, then the plateau
    assert parties[2] == parties[5] == "–"
    assert "quarantined list" in rows[1][6] and "pipeline_failed portal" in rows[2][6]
    links = parsed(night.site / "index.html").links
    for index in (0, 1, 3, 4):
        page = snapshot_page_path(night.site, snapshot_of(night, index))
        assert page.exists() and f"snapshots/{page.name}" in links


def test_formula_error_page_explains_the_quarantine_down_to_the_line(night: Night) -> None:
    page = snapshot_page_path(night.site, snapshot_of(night, 1))
    text = page.read_text(encoding="utf-8")
    assert "Not published: quarantined." in text and "critical checks failed" in text
    tables = parsed(page)
    failures = [t for t in tables.tables if t and t[0][:3] == ["division", "ballot line", "observed"]]
    assert failures, "no failure table on the quarantined snapshot's page"
    rows = [row for t in failures for row in t[1:]]
    # C1 on the whole country and on Bishkek, with the division's breadcrumb.
    assert any(row[0] == "Кыргызская Республика" and float(row[2]) > 140 for row in rows)
    assert any(row[0].startswith("Кыргызская Республика › г. Бишкек") for row in rows)
    # C4 rows name the ballot line and show both percentages: published is double the computed.
    doubled = [row for row in rows if row[1].startswith("№") and row[4] != "–"]
    assert doubled
    published, computed = (float(doubled[0][i].rstrip("%")) for i in (4, 5))
    assert published == pytest.approx(2 * computed, abs=0.02)
    # Links: a copy of the archived raw page, identical to the archive's body, and the portal page.
    raw_links = [href for href in tables.links if href.startswith("../raw/")]
    assert raw_links
    sha256 = Path(raw_links[0]).stem
    assert (page.parent / raw_links[0]).read_bytes() == RawArchive(night.data / "raw").read(sha256)
    assert any(href.startswith(f"{night.portal}/ru/results/jk2021/list/") for href in tables.links)


def test_alerts_link_to_the_snapshot_page(night: Night) -> None:
    alerts = [json.loads(line) for line in (night.data / "alerts.jsonl").read_text().splitlines()]
    [quarantined] = [a for a in alerts if a["kind"] == "quarantined"]
    expected = snapshot_page_path(night.data / "reports" / "jk2021", snapshot_of(night, 1))
    assert quarantined["report_path"] == str(expected)


def test_seat_projection_of_a_published_snapshot_matches_the_warehouse(night: Night) -> None:
    final = snapshot_of(night, 4)
    summary = json.loads(snapshot_page_path(night.site, final).with_suffix(".json").read_text())
    with connect(night.warehouse) as db:
        stored = db.query("SELECT choice_position, seats FROM seat_allocations WHERE snapshot_id = ? "
                          "AND contest_id = 'list' AND seats > 0", [final])
    projected = {int(re.match(r"№(\d+)", s["party"]).group(1)): s["seats"] for s in summary["seats"]}  # type: ignore[union-attr]
    assert projected == {int(position): int(seats) for position, seats in stored}
    assert sum(projected.values()) == 54


def test_a_second_build_rewrites_only_the_index_unless_asked(night: Night) -> None:
    again = run_cli(night.data, "report", "--election", "jk2021", "--out", str(night.site),
                    "--warehouse", night.warehouse)
    assert again.returncode == 0 and "0 snapshot pages written" in again.stdout
    asked = run_cli(night.data, "report", "--election", "jk2021", "--out", str(night.site),
                    "--warehouse", night.warehouse, "--snapshot", snapshot_of(night, 1))
    assert asked.returncode == 0 and "1 snapshot pages written" in asked.stdout


def test_every_portal_region_maps_to_one_shape_or_abroad() -> None:
    pcodes = {f["properties"]["pcode"] for f in region_shapes()["features"]}
    assert len(pcodes) == 9
    for region in REGIONS:
        for name in (region.name_ru, region.name_kg):
            match = match_region(name)
            assert match.pcode in pcodes or match.abroad, name
    assert {match_region(r.name_ru).pcode for r in REGIONS} - {ABROAD} == pcodes
    assert match_region("г.Бишкек ").pcode is None  # the map's spelling is not the portal's
    assert match_region("  г.  Бишкек ").pcode == PORTAL_REGIONS["г. Бишкек"]
    assert "ADM1_PCODE" in GEOJSON_PATH.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def served(night: Night) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with LoopbackHttpServer(functools.partial(Quiet, directory=str(night.site))) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install -y chromium (make test does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                              timeout=60_000)
        yield chromium
        chromium.close()


@dataclass
class Opened:
    page: Any
    console_errors: list[str]
    foreign_requests: list[str]


def open_page(browser: Any, url: str, allowed_prefix: str) -> Opened:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(60_000)
    errors: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith(allowed_prefix)
            or request.url.startswith("data:") else foreign.append(request.url))
    page.goto(url)
    page.evaluate("window.chartsDrawn.then(() => true)")
    return Opened(page, errors, foreign)


def chart_marks(page: Any) -> dict[str, int]:
    """Per chart slot: how many data marks (not axes or legends) its SVG holds."""
    counts: dict[str, int] = page.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('.chart')).map(slot => [slot.id,"
        " slot.querySelectorAll('svg g.role-mark > *').length]))")
    return counts


def test_night_index_renders_in_chromium(night: Night, served: str, browser: Any) -> None:
    opened = open_page(browser, f"{served}/index.html", served)
    marks = chart_marks(opened.page)
    assert set(marks) == {"chart-timeline", "chart-seat-history"}
    assert all(count > 0 for count in marks.values()), marks
    # The 149% spike is a labelled point on the timeline.
    labels = opened.page.evaluate(
        "Array.from(document.querySelectorAll('#chart-timeline svg text')).map(t => t.textContent)")
    assert any(re.fullmatch(r"149\.\d\d% quarantined", label) for label in labels), labels
    assert any(label == "86.96% published" for label in labels), labels
    RESULTS.mkdir(parents=True, exist_ok=True)
    opened.page.screenshot(path=str(RESULTS / "report-night-index.png"), full_page=True)
    assert opened.console_errors == [] and opened.foreign_requests == []
    opened.page.close()


@pytest.mark.parametrize("label_index", [1, 4], ids=["formula-error", "final"])
def test_snapshot_page_renders_every_chart_and_a_shape_per_region(night: Night, served: str, browser: Any,
                                                                   label_index: int) -> None:
    name = snapshot_page_path(night.site, snapshot_of(night, label_index)).name
    opened = open_page(browser, f"{served}/snapshots/{name}", served)
    marks = chart_marks(opened.page)
    assert set(marks) == {"chart-national", "chart-seats", "chart-map-leader", "chart-map-turnout",
                          "chart-fingerprint", "chart-last-digits"}
    assert all(count > 0 for count in marks.values()), marks
    for chart in ("chart-map-leader", "chart-map-turnout"):
        shapes = opened.page.evaluate(
            f"document.querySelectorAll('#{chart} svg g.mark-shape.role-mark > path').length")
        assert shapes == len(region_shapes()["features"]) == 9
    bars = opened.page.evaluate(
        "document.querySelectorAll('#chart-national svg [aria-roledescription=\"bar\"]').length")
    assert bars == 22  # 21 parties and against all
    if label_index == 1:
        RESULTS.mkdir(parents=True, exist_ok=True)
        opened.page.screenshot(path=str(RESULTS / "report-formula-error.png"), full_page=True)
    assert opened.console_errors == [] and opened.foreign_requests == []
    opened.page.close()


def test_site_opens_from_disk_without_any_network(night: Night, browser: Any) -> None:
    opened = open_page(browser, (night.site / "index.html").as_uri(), "file://")
    assert all(count > 0 for count in chart_marks(opened.page).values())
    assert opened.console_errors == [] and opened.foreign_requests == []
    opened.page.close()


def test_a_snapshot_no_longer_staged_is_read_back_from_the_warehouse(night: Night) -> None:
    # The versioned tables keep a row under the snapshot that first showed it: the report
    # must read "as of" a snapshot, or a later snapshot would lose its unchanged divisions.
    import pandas as pd

    from etl.report.night import _warehouse_snapshot

    snapshot_id = snapshot_of(night, len(NIGHT) - 2)  # final: most rows unchanged since earlier
    staged = night.data / "staging" / "jk2021" / "snapshots" / snapshot_id
    from_warehouse = _warehouse_snapshot("jk2021", snapshot_id, night.warehouse)
    for name, frame in (("divisions", from_warehouse.divisions), ("turnout", from_warehouse.turnout),
                        ("results", from_warehouse.results)):
        expected = pd.read_parquet(staged / f"{name}.parquet")
        keys = [c for c in ("contest_id", "division_id", "choice_position", "choice_name")
                if c in expected.columns]
        got = frame[list(expected.columns)].sort_values(keys).reset_index(drop=True)
        want = expected.sort_values(keys).reset_index(drop=True)
        assert len(got) == len(want) > 0, name
        assert got["division_id"].tolist() == want["division_id"].tolist(), name
        if name == "results":
            assert got["votes"].astype("Int64").tolist() == want["votes"].astype("Int64").tolist()
