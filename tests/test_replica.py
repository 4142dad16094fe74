"""The portal replica over real HTTP on loopback: figures, consistency, HTTP semantics, faults.

Pages are parsed here by minimal means (lxml + label lookup), independent of `etl.parse`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import lxml.html
import pytest
import requests
from facts import FINAL_SHARES, PRELIMINARY_SHARES

from etl.replica import Faults, ReplicaServer, load_scenario
from etl.replica.kg2021 import build_kg2021
from etl.replica.render import PortalRenderer

REPO = Path(__file__).resolve().parent.parent
LIST = "/ru/results/jk2021/list/"

PROTOCOL_LABELS = {
    "Число избирателей, внесенных в список избирателей": "registered",
    "Число избирателей, получивших бюллетени": "ballots_issued",
    "Число избирателей, принявших участие в голосовании": "ballots_cast",
    "Число недействительных бюллетеней": "invalid",
    "Число действительных бюллетеней": "valid",
    "Явка избирателей": "turnout",
    "Обработано протоколов УИК": "processed",
}


@dataclass(frozen=True)
class Row:
    position: int | None
    name: str
    votes: int
    pct: float


@dataclass(frozen=True)
class Parsed:
    division_id: str
    level: str
    protocol: dict[str, int | float | tuple[int, int] | None]
    rows: tuple[Row, ...]
    against_all: Row | None
    children: tuple[tuple[str, str], ...]  # (href, processed text)


def _int(text: str) -> int | None:
    text = text.strip().replace(" ", "").replace("\u00a0", "").replace("\u202f", "")
    return None if text in ("", "—", "-") else int(text)


def _pct(text: str) -> float | None:
    text = text.strip().rstrip("%").strip().replace(",", ".")
    return None if text in ("", "—", "-") else float(text)


def parse(html: str) -> Parsed:
    doc = lxml.html.fromstring(html)
    (h1,) = doc.xpath("//h1[@data-division-id]")
    protocol: dict[str, int | float | tuple[int, int] | None] = {}
    for tr in doc.xpath("//table[@class='protocol']//tr"):
        key = PROTOCOL_LABELS[tr.xpath("./th")[0].text_content().strip()]
        value = tr.xpath("./td")[0].text_content()
        if key == "turnout":
            protocol[key] = _pct(value)
        elif key == "processed":
            counted, total = re.fullmatch(r"(\d+) из (\d+)", value.strip()).groups()
            protocol[key] = (int(counted), int(total))
        else:
            protocol[key] = _int(value)
    rows, against_all = [], None
    for tr in doc.xpath("//table[@class='results']/tbody/tr"):
        cells = [td.text_content().strip() for td in tr.xpath("./td")]
        row = Row(_int(cells[0]), cells[1], _int(cells[2]) or 0, _pct(cells[3]) or 0.0)
        if cells[1] == "Против всех":
            against_all = row
        else:
            rows.append(row)
    children = tuple(
        (tr.xpath(".//a/@href")[0], tr.xpath("./td")[1].text_content())
        for tr in doc.xpath("//table[@class='subdivisions']/tbody/tr")
    )
    return Parsed(
        h1.get("data-division-id"), h1.get("data-level"), protocol, tuple(rows), against_all,
        children,
    )  # fmt: skip


@pytest.fixture(scope="module")
def server():
    with ReplicaServer("kg2021", at="final") as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset(request):
    """Every test starts with no faults; the module server keeps whatever snapshot it sets."""
    if "server" in request.fixturenames:
        request.getfixturevalue("server").clear_faults()
    yield


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        yield session


def get_page(http: requests.Session, server: ReplicaServer, path: str) -> Parsed:
    response = http.get(server.base_url + path, timeout=10)
    assert response.status_code == 200, (path, response.status_code)
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    return parse(response.content.decode("utf-8"))


def assert_consistent(page: Parsed) -> None:
    """The identities of SPEC A that every correct page satisfies."""
    p = page.protocol
    counted, total = p["processed"]
    assert 0 <= counted <= total
    if counted == 0:
        assert p["ballots_cast"] is None and p["invalid"] is None and not page.rows
        assert p["registered"] > 0
        return
    assert p["registered"] >= p["ballots_issued"] >= p["ballots_cast"] > 0
    assert p["valid"] + p["invalid"] == p["ballots_cast"]
    assert sum(r.votes for r in page.rows) + page.against_all.votes == p["valid"]
    assert p["turnout"] == round(p["ballots_cast"] / p["registered"] * 100, 2)
    for row in (*page.rows, page.against_all):
        assert row.pct == round(row.votes / p["ballots_cast"] * 100, 2), row
    positions = [r.position for r in page.rows]
    assert positions == sorted(set(positions)), "one row per ballot line, in ballot order"


# -- national figures --------------------------------------------------------------------


def test_final_list_root_matches_facts(server, http):
    server.goto("final")
    page = get_page(http, server, LIST)
    p = page.protocol
    assert (page.division_id, page.level) == ("0", "country")
    assert p["registered"] == 3_703_420
    assert p["ballots_cast"] == 1_281_622
    assert p["turnout"] == 34.61
    assert p["processed"] == (2474, 2494)  # 20 annulled precincts stay out
    assert 9.0 < p["invalid"] / p["ballots_cast"] * 100 < 9.6
    shares = {r.position: r.pct for r in page.rows}
    assert len(shares) == 21
    for position, pct in FINAL_SHARES.items():
        assert abs(shares[position] - pct) <= 0.02, position
    assert all(pct < 5 for position, pct in shares.items() if position not in FINAL_SHARES)
    names = {r.position: r.name for r in page.rows}
    assert "Ата-Журт Кыргызстан" in names[21] and names[21].startswith("«")
    assert_consistent(page)


def test_preliminary_shares_match_facts(server, http):
    server.goto("preliminary")
    page = get_page(http, server, LIST)
    p = page.protocol
    assert p["processed"] == (2247, 2494)
    assert round(2247 / 2494 * 100, 2) == 90.10
    assert p["registered"] == 3_703_420 and p["ballots_cast"] == 1_182_291
    assert p["turnout"] == 31.92
    shares = {r.position: r.pct for r in page.rows}
    assert shares.keys() == PRELIMINARY_SHARES.keys()
    for position, pct in PRELIMINARY_SHARES.items():
        assert abs(shares[position] - pct) <= 0.02, position
    assert page.against_all.pct == 2.17
    assert abs(sum(shares.values()) - 86.96) <= 0.05
    assert_consistent(page)


def test_ground_truth_api_agrees_with_pages(server, http):
    scenario = server.scenario
    labels = [s.label for s in scenario.snapshots]
    assert len(labels) >= 15 and labels[0] == "polls-closed" and labels[-1] == "final"
    order = ["formula-error", "withdrawn-maintenance", "withdrawn-503", "preliminary",
             "recount-1", "annulment", "duplicate-candidate", "final"]  # fmt: skip
    assert [labels.index(label) for label in order] == sorted(labels.index(x) for x in order)
    times = [s.portal_time for s in scenario.snapshots]
    assert times == sorted(times) and times[0].isoformat() == "2021-11-28T20:00:00+06:00"
    assert times[-1].date().isoformat() == "2021-12-15"
    index = scenario.index_of("counting-3")
    server.goto(index)
    page = get_page(http, server, LIST)
    truth = scenario.tally(index)
    assert page.protocol["ballots_cast"] == truth.ballots_cast
    assert tuple(r.votes for r in page.rows) == truth.votes
    state = http.get(server.base_url + "/_replica/state").json()
    assert (state["index"], state["label"]) == (index, "counting-3")


# -- consistency ---------------------------------------------------------------------------


def _sample_paths(scenario) -> list[str]:
    contest = scenario.contests["list"]
    paths = [LIST]
    for region_id in contest.divisions["0"].children:
        region = contest.divisions[region_id]
        paths.append(f"{LIST}{region_id}/")
        paths.append(f"{LIST}{region.children[0]}/")
        leaf = contest.divisions[region.children[-1]]
        if leaf.children:
            paths.append(f"{LIST}{leaf.children[0]}/")
    for contest_id in ("okrug-1", "okrug-3", "okrug-20", "okrug-36"):
        okrug = scenario.contests[contest_id]
        paths.append(f"/ru/results/jk2021/{contest_id}/")
        paths.append(f"/ru/results/jk2021/{contest_id}/{okrug.divisions['0'].children[5]}/")
    return paths


@pytest.mark.parametrize(
    "label", ["polls-closed", "counting-2", "preliminary", "recount-2", "annulment", "final"]
)
def test_sampled_pages_are_internally_consistent(server, http, label):
    server.goto(label)
    for path in _sample_paths(server.scenario):
        page = get_page(http, server, path)
        assert_consistent(page)


def test_parent_figures_are_sums_of_children(server, http):
    server.goto("recount-1")  # a mix of automatic and manual counts
    contest = server.scenario.contests["list"]
    chui_district = contest.divisions["7"].children[0]
    parents = [LIST, f"{LIST}7/", f"{LIST}{chui_district}/", "/ru/results/jk2021/okrug-5/"]
    for parent_path in parents:
        parent = get_page(http, server, parent_path)
        assert parent.children, parent_path
        kids = [get_page(http, server, href) for href, _ in parent.children]
        for key in ("registered", "ballots_issued", "ballots_cast", "invalid", "valid"):
            assert parent.protocol[key] == sum(k.protocol[key] or 0 for k in kids), key
        for i, row in enumerate(parent.rows):
            assert row.votes == sum(k.rows[i].votes for k in kids if k.rows)
        assert parent.against_all.votes == sum(k.against_all.votes for k in kids if k.rows)
        counted = sum(k.protocol["processed"][0] for k in kids)
        assert parent.protocol["processed"] == (counted, sum(k.protocol["processed"][1] for k in kids))
        assert [text for _, text in parent.children] == [
            f"{k.protocol['processed'][0]} из {k.protocol['processed'][1]}" for k in kids
        ]


def test_hierarchy_shapes(server, http):
    server.goto("final")
    root = get_page(http, server, LIST)
    assert len(root.children) == 10
    chui = get_page(http, server, f"{LIST}7/")
    district = get_page(http, server, chui.children[0][0])
    assert district.level == "district"
    precinct = get_page(http, server, district.children[0][0])
    assert precinct.level == "precinct" and not precinct.children
    assert re.fullmatch(r"7\d{3}", precinct.division_id)
    abroad = get_page(http, server, f"{LIST}9/")
    assert len(abroad.children) == 59  # abroad: region -> precincts directly
    assert get_page(http, server, abroad.children[0][0]).level == "precinct"
    okrug = get_page(http, server, "/ru/results/jk2021/okrug-1/")
    assert okrug.level == "constituency"
    assert get_page(http, server, okrug.children[0][0]).level == "precinct"
    precincts = sum(len(c.divisions) - 1 for cid, c in server.scenario.contests.items() if cid != "list")
    assert precincts == 2435  # okrugs cover the in-country precincts only
    election = http.get(server.base_url + "/ru/results/jk2021/").text
    assert len(re.findall(r'<a class="contest" data-contest="okrug-\d+"', election)) == 36
    elections = http.get(server.base_url + "/ru/results/").text
    assert 'class="election" href="/ru/results/jk2021/"' in elections


def test_against_all_wins_two_bishkek_okrugs(server):
    scenario = server.scenario
    final = scenario.index_of("final")
    winners = {}
    for number in range(1, 37):
        tally = scenario.tally(final, f"okrug-{number}")
        winners[number] = tally.against_all > max(tally.votes)
        assert 5 <= len(tally.votes) <= 15
    assert {n for n, against in winners.items() if against} == {3, 4}


def test_uncounted_precinct_shows_registered_only(server, http):
    server.goto("polls-closed")
    response = http.get(server.base_url + f"{LIST}7001/")
    page = parse(response.text)
    assert page.protocol["processed"] == (0, 1)
    assert page.protocol["registered"] > 0
    assert page.protocol["ballots_cast"] is None and page.protocol["turnout"] is None
    assert page.rows == () and page.against_all is None
    assert "<td>—</td>" in response.text


def test_kg_pages_and_json_api(server, http):
    server.goto("final")
    text = http.get(server.base_url + "/kg/results/jk2021/list/").text
    assert "Баарына каршы" in text and "Против всех" not in text
    assert "3\u00a0703\u00a0420" in text
    api = http.get(
        server.base_url + "/api/election/jk2021/ballot-count", params={"type": "list", "id": "0"}
    )
    assert api.status_code == 200 and api.headers["Content-Type"].startswith("application/json")
    document = api.json()
    assert document["overview"]["pcos"] == {
        "p3": 3_703_420, "p5": 1_281_622,
        "p7": server.scenario.tally(server.index).invalid,
        "p8": 1_281_622 - server.scenario.tally(server.index).invalid,
    }  # fmt: skip
    root, *regions = document["ballotCounts"]
    assert root["division"]["id"] == "0" and len(regions) == 10
    assert all(r["division"]["parent_id"] == "0" for r in regions)
    by_position = {c["position"]: c for c in root["ballotCounts"]}
    assert by_position[21]["pcosPercent"] == "17.32%"
    assert by_position[21]["pcosCount"] == sum(
        {c["position"]: c["pcosCount"] for c in r["ballotCounts"]}[21] for r in regions
    )
    assert http.get(server.base_url + "/api/election/jk2021/ballot-count?type=x").status_code == 404


# -- HTTP semantics -------------------------------------------------------------------------


def test_conditional_requests(server, http):
    server.goto("preliminary")
    url = server.base_url + f"{LIST}7/"
    first = http.get(url)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and modified == "Sun, 28 Nov 2021 15:31:27 GMT"
    assert etag == '"' + hashlib.sha1(first.content).hexdigest() + '"'
    again = http.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    assert http.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    earlier = "Sun, 28 Nov 2021 15:00:00 GMT"
    assert http.get(url, headers={"If-Modified-Since": earlier}).status_code == 200
    server.goto("counting-5")
    updated = http.get(url, headers={"If-None-Match": etag})
    assert updated.status_code == 200 and updated.headers["ETag"] != etag
    assert http.get(url, headers={"If-Modified-Since": modified}).status_code == 200
    assert http.get(server.base_url + "/ru/results/jk2021/nowhere/").status_code == 404
    assert http.head(url).headers["Content-Length"] == str(len(updated.content))


def test_many_concurrent_clients(server):
    server.goto("final")
    scenario = server.scenario
    paths = [f"{LIST}{d}/" for d in list(scenario.contests["list"].divisions)[:400]]
    renderer = PortalRenderer(scenario)
    index = server.index
    expected = {p: renderer.render(index, p).body for p in paths}

    def client(worker: int) -> int:
        ok = 0
        with requests.Session() as session:
            for path in paths[worker::50] * 2:
                response = session.get(server.base_url + path, timeout=10)
                ok += response.status_code == 200 and response.content == expected[path]
        return ok

    with ThreadPoolExecutor(50) as pool:
        assert sum(pool.map(client, range(50))) == 2 * len(paths)


# -- fault switches -------------------------------------------------------------------------


def test_fault_status_first_k_requests_then_success(server, http):
    server.goto("final")
    server.set_faults(status=503, status_count=2, retry_after=1)
    url = server.base_url + f"{LIST}7/"
    statuses = [http.get(url) for _ in range(3)]
    assert [r.status_code for r in statuses] == [503, 503, 200]
    assert statuses[0].headers["Retry-After"] == "1"
    # counted per path: another path starts its own count
    assert http.get(server.base_url + f"{LIST}8/").status_code == 503


def test_fault_status_every_request_and_path_regex(server, http):
    server.goto("final")
    server.set_faults(status=429, retry_after=7, path_regex=r"/list/7/$")
    for _ in range(3):
        response = http.get(server.base_url + f"{LIST}7/")
        assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert http.get(server.base_url + f"{LIST}8/").status_code == 200
    for status in (500, 502, 504):
        server.set_faults(status=status, status_count=1)
        assert http.get(server.base_url + LIST).status_code == status
        assert http.get(server.base_url + LIST).status_code == 200


def test_fault_latency(server, http):
    server.goto("final")
    server.set_faults(latency=0.3)
    started = time.perf_counter()
    assert http.get(server.base_url + LIST).status_code == 200
    assert time.perf_counter() - started >= 0.3
    server.clear_faults()
    started = time.perf_counter()
    http.get(server.base_url + LIST)
    assert time.perf_counter() - started < 0.3


def test_fault_hang_first_request(server):
    server.goto("final")
    server.set_faults(hang=2.0, hang_count=1)
    with requests.Session() as session, pytest.raises(requests.exceptions.ReadTimeout):
        session.get(server.base_url + LIST, timeout=0.5)
    with requests.Session() as session:
        assert session.get(server.base_url + LIST, timeout=0.5).status_code == 200


def test_fault_truncated_body(server):
    server.goto("final")
    server.set_faults(truncate=True, truncate_count=1)
    url = server.base_url + LIST
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"GET {LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):  # the server closes after the partial body
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert 0 < len(body) < length
    with requests.Session() as session:  # the path's second request is whole again
        assert len(session.get(url, timeout=5).content) == length
    server.set_faults(truncate=True, truncate_count=1)
    with requests.Session() as session:
        with pytest.raises(requests.exceptions.RequestException):
            session.get(url, timeout=5)
        assert len(session.get(url, timeout=5).content) == length


def test_faults_over_http_control_endpoints(server, http):
    server.goto("final")
    base = server.base_url
    response = http.post(base + "/_replica/faults", json={"status": 502, "status_count": 1})
    assert response.status_code == 200 and response.json()["status"] == 502
    assert http.get(base + LIST).status_code == 502
    assert http.get(base + LIST).status_code == 200
    assert http.post(base + "/_replica/faults", json={"nonsense": 1}).status_code == 400
    http.post(base + "/_replica/faults", json={"status": 503})
    assert http.get(base + LIST).status_code == 503
    assert http.get(base + "/_replica/state").status_code == 200  # control is never faulted
    assert http.delete(base + "/_replica/faults").status_code == 200
    assert http.get(base + LIST).status_code == 200
    moved = http.post(base + "/_replica/goto", params={"label": "preliminary"}).json()
    assert moved["label"] == "preliminary" and server.index == moved["index"]
    assert http.post(base + "/_replica/goto", params={"at": "3"}).json()["index"] == 3
    assert http.post(base + "/_replica/goto", params={"label": "nope"}).status_code == 400
    assert Faults.from_json({"latency": 1}).active and not Faults().active


# -- incidents ------------------------------------------------------------------------------


def test_formula_error_doubles_leading_percentages_only(server, http):
    index = server.scenario.index_of("formula-error")
    server.goto(index)
    page = get_page(http, server, LIST)
    total = sum(r.pct for r in page.rows)
    assert 140 <= total <= 150
    truth = server.scenario.tally(index)
    assert tuple(r.votes for r in page.rows) == truth.votes  # counts unaffected
    doubled = server.scenario.snapshots[index].doubled_positions
    assert doubled == frozenset(FINAL_SHARES)
    for row in page.rows:
        correct = truth.pct(row.votes)
        assert row.pct == (round(correct * 2, 2) if row.position in doubled else correct)
    region = get_page(http, server, f"{LIST}5/")  # "on every page"
    assert sum(r.pct for r in region.rows) > 120
    server.goto("preliminary")
    assert abs(sum(r.pct for r in get_page(http, server, LIST).rows) - 86.96) < 0.05


def test_withdrawn_pages(server, http):
    server.goto("withdrawn-maintenance")
    for path in (LIST, f"{LIST}7/", "/ru/results/jk2021/"):
        response = http.get(server.base_url + path)
        assert response.status_code == 200
        assert "Ведутся технические работы" in response.text
        assert "data-division-id" not in response.text and "<table" not in response.text
    server.goto("withdrawn-503")
    for path in (LIST, "/ru/results/", "/api/election/jk2021/ballot-count?type=list"):
        response = http.get(server.base_url + path)
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0


def test_annulment_lowers_cumulative_counts(server, http):
    scenario = server.scenario
    server.goto("recount-4")
    before = get_page(http, server, LIST)
    server.goto("annulment")
    after = get_page(http, server, LIST)
    dropped = before.protocol["ballots_cast"] - after.protocol["ballots_cast"]
    assert 11_000 <= dropped <= 13_000
    assert after.protocol["processed"] == (before.protocol["processed"][0] - 20, 2494)
    annulled = scenario.snapshots[scenario.index_of("annulment")].annulled
    assert len(annulled) == 20
    precinct = next(iter(annulled))
    page = get_page(http, server, f"{LIST}{precinct}/")
    assert page.protocol["processed"] == (0, 1) and not page.rows
    server.goto("final")
    assert get_page(http, server, f"{LIST}{precinct}/").protocol["processed"] == (0, 1)


def test_duplicate_candidate_row(server, http):
    scenario = server.scenario
    index = scenario.index_of("duplicate-candidate")
    duplicate = scenario.snapshots[index].duplicate
    assert duplicate is not None and duplicate.contest_id.startswith("okrug-")
    path = f"/ru/results/jk2021/{duplicate.contest_id}/"
    server.goto(index)
    rows = get_page(http, server, path).rows
    counts = Counter((r.position, r.name) for r in rows)
    repeated = [key for key, n in counts.items() if n > 1]
    assert len(repeated) == 1 and repeated[0][0] == duplicate.position
    places = [i for i, r in enumerate(rows) if r.position == duplicate.position]
    assert len(places) == 2 and places[1] - places[0] > 1  # two places, not adjacent
    other = get_page(http, server, "/ru/results/jk2021/okrug-1/")
    assert_consistent(other)
    server.goto("final")
    final_rows = get_page(http, server, path).rows
    assert len(final_rows) == len(rows) - 1
    assert len({r.position for r in final_rows}) == len(final_rows)


# -- determinism, timeline, CLI -------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_precincts():
    paths = [LIST, f"{LIST}7/", f"{LIST}7001/", "/ru/results/jk2021/okrug-7/", "/kg/results/"]
    first, second = PortalRenderer(build_kg2021(7)), PortalRenderer(build_kg2021(7))
    for index in (2, 8, 18):
        for path in paths:
            assert first.render(index, path).body == second.render(index, path).body
    other = build_kg2021(8)
    assert other.tally(18).ballots_cast == 1_281_622  # totals are pinned, precincts are not
    assert other.tally(18, "list", "7001") != first.scenario.tally(18, "list", "7001")
    assert load_scenario("kg2021") is load_scenario("kg2021")


def test_live_mode_advances_through_the_timeline():
    with ReplicaServer("kg2021", at=0, live=True, speed=20_000) as srv:
        start = requests.get(srv.base_url + "/_replica/state").json()["index"]
        time.sleep(0.5)
        later = requests.get(srv.base_url + "/_replica/state").json()
        assert start == 0 and later["index"] > start and later["live"] is True
        srv.goto("recount-4")
        assert srv.index >= srv.scenario.index_of("recount-4")


def test_cli_serves_and_documents_live_mode():
    help_text = subprocess.run(
        [sys.executable, "-m", "etl.replica", "--help"],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    assert "--live" in help_text and "/ SPEED" in help_text
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "etl.replica", "--scenario", "kg2021", "--port", str(port),
         "--at", "preliminary", "--fault-status", "503", "--fault-count", "1"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                state = requests.get(f"http://127.0.0.1:{port}/_replica/state", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert state.json()["label"] == "preliminary"
        assert requests.get(f"http://127.0.0.1:{port}{LIST}").status_code == 503
        assert requests.get(f"http://127.0.0.1:{port}{LIST}").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_server_answers_pipelined_keep_alive_requests(server):
    server.goto("final")
    request = f"GET {LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(request * 3 + b"GET /_replica/state HTTP/1.1\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 4
    assert json.loads(received.rsplit(b"\r\n\r\n", 1)[1])["label"] == "final"


def test_concurrent_goto_is_safe(server, http):
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            for label in ("preliminary", "final") * 20:
                server.goto(label)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=flip)
    thread.start()
    for _ in range(40):
        page = get_page(http, server, LIST)
        assert page.protocol["ballots_cast"] in (1_182_291, 1_281_622)
    thread.join()
    assert not errors


def test_every_precinct_and_division_is_consistent_in_the_ground_truth():
    scenario = load_scenario("kg2021")
    registered = scenario.registered
    for contest in scenario.contests.values():
        for counts in (contest.automatic, contest.manual):
            assert (counts >= 0).all()
            issued, cast, invalid = counts[:, 0], counts[:, 1], counts[:, 2]
            assert (registered[contest.precinct_rows] >= issued).all() and (issued >= cast).all()
            assert (counts[:, 3:].sum(axis=1) + invalid == cast).all()
    for label in ("counting-3", "recount-2", "final"):
        index = scenario.index_of(label)
        for contest in scenario.contests.values():
            for division in contest.divisions.values():
                tally = scenario.tally(index, contest.contest_id, division.division_id)
                assert sum(tally.votes) + tally.against_all + tally.invalid == tally.ballots_cast
                if division.children:
                    kids = [scenario.tally(index, contest.contest_id, c) for c in division.children]
                    assert tally.ballots_cast == sum(k.ballots_cast for k in kids)
                    assert tally.votes == tuple(map(sum, zip(*(k.votes for k in kids), strict=True)))


def test_goto_by_portal_time(server, http):
    response = http.post(
        server.base_url + "/_replica/goto", params={"time": "2021-11-28T21:30:00+06:00"}
    )
    assert response.json()["label"] == "withdrawn-503"  # the last update before 21:30
    when = datetime.fromisoformat("2021-12-15T18:00:00+06:00")
    assert server.scenario.index_at(when) == server.scenario.index_of("final")


@pytest.mark.parametrize(("scenario_id", "label"), [
    ("kg2021", "final"), ("kg2021", "formula-error"), ("kg2021", "withdrawn-maintenance"),
    ("synthetic", "final")])
def test_a_restamped_page_is_the_page_rendered_restamped(scenario_id: str, label: str) -> None:
    """The server derives a re-stamped page from the one it served before the re-stamp
    (its time element and Last-Modified moved); byte for byte what rendering gives."""
    from datetime import timedelta

    from etl.replica.render import PortalRenderer

    scenario = load_scenario(scenario_id, precincts=2_000 if scenario_id == "synthetic" else None)
    renderer = PortalRenderer(scenario)
    index = scenario.index_of(label)
    paths = ["/ru/results/", f"/ru/results/{scenario.election_id}/",
             f"/kg/results/{scenario.election_id}/"]
    for contest_id, contest in list(scenario.contests.items())[:3]:
        for lang in ("ru", "kg"):
            paths.append(f"/{lang}/results/{scenario.election_id}/{contest_id}/")
            paths += [f"/{lang}/results/{scenario.election_id}/{contest_id}/{division}/"
                      for division in list(contest.divisions)[:150]]
    derived = 0
    for path in paths:
        for seconds in (60, 3600.5, -86400):
            before = renderer.render(index, path)
            assert before is not None, path
            moved = renderer.restamped(index, before, timedelta(seconds=seconds), path)
            expected = renderer.render(index, path, restamp=timedelta(seconds=seconds))
            if moved is None:  # rendered again: maintenance, or no one time element
                assert (label == "withdrawn-maintenance"
                        or before.body.count(b'<time class="updated"') != 1), path
                continue
            derived += 1
            assert moved == expected, (path, seconds)
    # every page but the list of elections (it shows no time) is derived
    assert derived == (0 if label == "withdrawn-maintenance" else 3 * (len(paths) - 1))
