"""Differential tests: the lxml fast path gives exactly what BeautifulSoup (the parser of
record) gives — records or error — on replica pages, the fixtures and the fault pages.

`python -m bench.differential` runs the same comparison on every page of all 19 snapshots
(190,000 pages: minutes, too long for the suite).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.differential import BASE, compare, fast_or_fallback, record_of_record, replica_pages
from etl.fastparse import NotSpecShaped, parse_division_fast
from etl.pagecache import page_key
from etl.replica.render import PortalRenderer
from etl.replica.scenario import load_scenario

PAGES = Path(__file__).parent / "fixtures" / "pages"
# Constituencies with the night's incidents: annulled precincts
# lie in okrug-25; okrug-32's root lists a candidate twice in `duplicate-candidate`.
INCIDENT_CONTESTS = ["okrug-25", "okrug-32"]


def distinct(pages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """One page per stamp-free body (the stamp is read alike on every page)."""
    seen: set[str] = set()
    kept = []
    for url, html in pages:
        keyed = page_key(url, html)
        if keyed is not None and keyed.key in seen:
            continue
        if keyed is not None:
            seen.add(keyed.key)
        kept.append((url, html))
    return kept


def assert_same(pages: list[tuple[str, bytes]]) -> dict[str, object]:
    result = compare(pages)
    assert result["mismatches"] == [], result["mismatches"][:3]  # type: ignore[index]
    return result


def test_the_final_portal_ru_and_kg_reads_alike_and_fast() -> None:
    # Every 8th page of the whole portal (all levels, both languages): the suite stays
    # quick; `python -m bench.differential` checks every page of every snapshot.
    scenario = load_scenario("kg2021")
    pages = list(replica_pages(scenario, scenario.index_of("final")))[::8]
    result = assert_same(pages)
    # The fast path really reads the portal's pages: no page needed the fallback.
    assert result["fast"] == result["pages"] == len(pages) > 1_000


@pytest.mark.parametrize("label", [s.label for s in load_scenario("kg2021").snapshots])
def test_every_snapshot_reads_alike_on_the_incident_constituencies(label: str) -> None:
    scenario = load_scenario("kg2021")
    pages = distinct(list(replica_pages(scenario, scenario.index_of(label), INCIDENT_CONTESTS)))
    result = assert_same(pages)
    if scenario.snapshots[scenario.index_of(label)].mode == "results":
        assert result["fast"] == result["pages"]
    else:  # maintenance and 503 pages: the parser of record reports them
        assert result["fast"] == 0


@pytest.mark.parametrize("fixture", sorted(p.name for p in PAGES.glob("*.html")))
def test_every_fixture_reads_alike(fixture: str) -> None:
    url = f"{BASE}/ru/results/jk2021/list/7/"
    assert_same([(url, (PAGES / fixture).read_bytes())])


def fault_pages() -> list[tuple[str, bytes]]:
    """The bodies the scrape tests' faults produce, and other damaged pages."""
    scenario = load_scenario("kg2021")
    renderer = PortalRenderer(scenario)
    url = f"{BASE}/ru/results/jk2021/list/7/"
    page = renderer.render(scenario.index_of("final"), "/ru/results/jk2021/list/7/")
    kg = renderer.render(scenario.index_of("final"), "/kg/results/jk2021/okrug-3/")
    maintenance = renderer.render(scenario.index_of("withdrawn-maintenance"), "/ru/results/jk2021/")
    unavailable = renderer.render(scenario.index_of("withdrawn-503"), "/ru/results/jk2021/list/")
    assert page and kg and maintenance and unavailable
    body = page.body
    bodies = [
        maintenance.body, unavailable.body, b"503 Service Unavailable (replica fault)\n", b"",
        body[: len(body) // 2], kg.body[: len(kg.body) // 2],  # truncated transfers
        body[: len(body) // 3], body[: body.index(b"</h1>") + 5],
        body.decode().encode("cp1251", errors="replace"),  # not UTF-8
        body.replace(b"<tbody>", b"<tbody><!-- comment -->"),
        body.replace(b"<tbody>", b"<tbody><script>var x = '<td>';</script>"),
        body.replace(b'class="updated" ', b""),  # a time without the class
        body.replace(b' datetime="2021-12-15T16:00:00+06:00"', b""),  # time from the text
        body.replace(b"2021-12-15T16:00:00+06:00", b"2021-12-15T16:00:00"),  # no offset
        body.replace(b"2021-12-15T16:00:00+06:00", b"15 December"),  # a bad time
        body.replace(b"<td>12 ", b"<td>-12 ", 1),  # a negative count
        body.replace(b",", b".", 3),  # decimal points
        body.replace(b"\xd0\xa7\xd0\xb8\xd1\x81\xd0\xbb\xd0\xbe \xd0\xb3\xd0\xbe\xd0\xbb\xd0\xbe"
                     b"\xd1\x81\xd0\xbe\xd0\xb2", b"Votes"),  # "Число голосов" in English
        body.replace(b'<table class="results">', b'<table class="results"><tr><td>x</td></tr>'),
        body.replace(b"</table>", b"</table><table class=\"results\"><thead><tr><th>\xe2\x84\x96"
                     b"</th><th>name</th><th>votes</th></tr></thead></table>", 1),
        body.replace(b'data-division-id="7"', b""),  # a heading without its id
        body.replace(b"<h1", b"<table><tr><td><h1", 1).replace(b"</h1>", b"</h1></td></tr></table>"),
        body.replace(b"&", b"&amp;"), body.replace(b"\xc2\xab", b"&laquo;"),
        body.replace(b"<td>", b"<td> ", 20), body.replace(b"</td>", b" </td>", 20),
        body.replace(b"<tr>", b"<tr class=\"against-all\">", 2),
        # Markup the fast path does not model, in capitals (HTML is case-insensitive).
        body.replace(b"<tbody>", b"<tbody><SCRIPT>var x = '<td>';</SCRIPT>"),
        body.replace(b"<tbody>", b"<tbody><Style>td { color: red }</Style>"),
        body.replace(b"<tbody>", b"<tbody><IFrame src=x></IFrame>"),
        # Cells with markup inside, a header cell in a results row, a results row of
        # header cells only, a count the number functions refuse (twice: the second
        # reading must not come from what the first one remembered).
        body.replace(b"<td>1</td>", b"<td><b>1</b></td>", 1),
        body.replace(b"<td>2</td>", b"<th>2</th>", 1),
        body.replace(b"<tbody>", b"<tbody><tr><th>1</th><th>x</th><th>2</th><th>3</th></tr>"),
        body.replace(b"%</td>", b"%x</td>", 1), body.replace(b"%</td>", b"%x</td>", 1),
    ]
    return [(url, b) for b in bodies]


def test_fault_and_damaged_pages_read_alike() -> None:
    pages = fault_pages()
    result = assert_same(pages)
    assert 0 < result["fast"] < len(pages)  # some are read fast, the rest fall back  # type: ignore[operator]


def test_a_page_the_fast_path_cannot_read_falls_back_to_the_parser_of_record() -> None:
    html = (PAGES / "layout_table_ru.html").read_bytes()
    url = f"{BASE}/ru/results/jk2021/list/7/"
    with pytest.raises(NotSpecShaped):
        parse_division_fast(html, url)
    page, fast = fast_or_fallback(html, url)
    assert not fast
    assert page == record_of_record(html, url)
