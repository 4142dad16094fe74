"""Tests of `etl.parse` on hand-written pages (tests/fixtures/pages) and on replica pages."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from etl.parse import (
    FractionalCountError,
    NumberFormatError,
    PageParseError,
    PortalMaintenance,
    page_encoding,
    parse_count,
    parse_counted_of_total,
    parse_division,
    parse_election,
    parse_election_list,
    parse_percent,
)
from etl.records import BallotLine, Link, ProtocolFigures

PAGES = Path(__file__).parent / "fixtures" / "pages"
BASE = "http://127.0.0.1:8765"
BISHKEK = timezone(timedelta(hours=6))


# Чуйская область's protocol in the SPEC example; its Kyrgyz page shows the same figures.
CHUY_PROTOCOL = ProtocolFigures(
    registered=421315,
    ballots_issued=141027,
    ballots_cast=140998,
    invalid=13554,
    valid=127444,
    turnout_pct_published=33.47,
    precincts_counted=371,
    precincts_total=392,
)


def page(name: str) -> bytes:
    return (PAGES / name).read_bytes()


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 182 291", 1182291),
        ("1182291", 1182291),
        ("1\u00a0182\u00a0291", 1182291),
        ("1\u202f182\u202f291", 1182291),
        ("1\u2009182\u2009291", 1182291),
        ("  4 906\n", 4906),
        ("0", 0),
        ("—", None),
        ("–", None),
        ("-", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_count_formats(text: str | None, expected: int | None) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3,48%", 3.48),
        ("3.48 %", 3.48),
        ("3.48", 3.48),
        ("3,48\u00a0%", 3.48),
        ("100%", 100.0),
        ("0,00%", 0.0),
        ("—", None),
        ("-", None),
        ("", None),
        ("%", None),
    ],
)
def test_parse_percent_formats(text: str, expected: float | None) -> None:
    assert parse_percent(text) == expected


@pytest.mark.parametrize("text", ["12a4", "1.182.291", "12 %", "5-", "--5"])
def test_malformed_count_raises_naming_the_text(text: str) -> None:
    with pytest.raises(NumberFormatError) as excinfo:
        parse_count(text)
    assert isinstance(excinfo.value, ValueError)
    assert repr(text) in str(excinfo.value)


@pytest.mark.parametrize("text", ["3,4,8%", "abc", "3.48%%", "1.2.3"])
def test_malformed_percent_raises_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="percentage"):
        parse_percent(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("371 из 392", (371, 392)),
        ("371 / 392", (371, 392)),
        ("371/392", (371, 392)),
        ("2 247 из 2 494", (2247, 2494)),
        # Kyrgyz puts the whole first: "of 392, 371".
        ("392 ичинен 371", (371, 392)),
        ("0 из 1", (0, 1)),
        ("—", (None, None)),
        ("15", (15, None)),
    ],
)
def test_counted_of_total(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_counted_of_total(text) == expected


# --------------------------------------------------------------------------- division pages


def test_spec_example_page() -> None:
    url = f"{BASE}/ru/results/jk2021/list/7/"
    parsed = parse_division(page("spec_example_ru.html"), url)

    assert parsed.declared_id == "7"
    assert parsed.level == "region"
    assert parsed.name == "Чуйская область"
    assert parsed.portal_updated_at == datetime(2021, 11, 28, 21, 5, 13, tzinfo=BISHKEK)
    assert parsed.portal_updated_at.utcoffset() == timedelta(hours=6)
    assert parsed.protocol == CHUY_PROTOCOL
    assert parsed.has_results_table
    assert parsed.lines == (
        BallotLine(1, "«Ата-Мекен»", False, 4906, 3.48),
        BallotLine(2, "«Бүтүн Кыргызстан»", False, 9503, 6.74),
        BallotLine(None, "Против всех", True, 3060, 2.17),
    )
    # The breadcrumb's link to the root is not a child; the subdivision table's link is.
    assert parsed.children == (
        Link(segment="7101", name="УИК №7101", href="/ru/results/jk2021/list/7101/"),
    )


def test_full_country_page_with_22_lines_and_10_children() -> None:
    parsed = parse_division(page("country_full_ru.html"), f"{BASE}/ru/results/jk2021/list/")

    assert len(parsed.lines) == 22
    assert [line.choice_position for line in parsed.lines] == [*range(1, 22), None]
    assert [line.is_against_all for line in parsed.lines] == [False] * 21 + [True]
    assert parsed.protocol.precincts_counted == 2247
    assert parsed.protocol.precincts_total == 2494
    # valid = choices + against all, as the protocol identity requires
    assert sum(line.votes or 0 for line in parsed.lines) == 1053783
    assert [c.segment for c in parsed.children] == [str(i) for i in range(1, 11)]
    assert parsed.children[6].name == "Чуйская область"


def test_every_number_format_and_missing_cells() -> None:
    parsed = parse_division(page("formats_ru.html"), f"{BASE}/ru/results/jk2021/list/7101/")

    assert parsed.protocol == ProtocolFigures(
        registered=1182291,  # U+202F
        ballots_issued=1182000,  # U+2009
        ballots_cast=1181000,  # U+00A0
        invalid=None,  # "-"
        valid=None,  # empty cell
        turnout_pct_published=31.92,  # point, no % sign
        precincts_counted=1,
        precincts_total=1,  # "1 / 1"
    )
    votes = {line.choice_position: (line.votes, line.pct_published) for line in parsed.lines}
    assert votes == {
        1: (1182291, 3.48),  # no separator; "3.48 %"
        2: (None, None),  # en dash and em dash are missing, not zero
        3: (None, None),  # empty cells
        4: (0, 0.0),  # a real zero stays zero
    }
    assert parsed.children == ()  # a precinct page has no child table


def test_updated_time_without_datetime_attribute_is_bishkek_time() -> None:
    parsed = parse_division(page("formats_ru.html"), f"{BASE}/ru/results/jk2021/list/7101/")

    assert parsed.portal_updated_at == datetime(2021, 11, 28, 21, 5, 13, tzinfo=BISHKEK)
    assert parsed.portal_updated_at.tzinfo is not None


def test_reordered_columns_unclassed_tables_and_against_all_by_label() -> None:
    url = f"{BASE}/ru/results/jk2021/okrug-7/"
    parsed = parse_division(page("reordered_columns_ru.html"), url)

    assert parsed.has_results_table
    assert parsed.lines == (
        BallotLine(2, "Асанов Бакыт Асанович", False, 8020, 20.0),
        BallotLine(1, "Токтогулова Айгүл Маратовна", False, 6015, 15.0),
        BallotLine(None, "ПРОТИВ ВСЕХ", True, 2005, 5.0),
    )
    # Protocol rows in another order and in <td> cells; absent rows stay None.
    assert parsed.protocol == ProtocolFigures(
        registered=100000, ballots_cast=40100, turnout_pct_published=40.1
    )
    # A relative href is resolved against the page URL.
    assert parsed.children == (
        Link("1201", "УИК №1201", "/ru/results/jk2021/okrug-7/1201/"),
        Link("1202", "УИК №1202", "/ru/results/jk2021/okrug-7/1202/"),
    )


def test_kyrgyz_page() -> None:
    parsed = parse_division(page("division_kg.html"), f"{BASE}/kg/results/jk2021/list/7/")

    assert parsed.name == "Чүй облусу"
    assert parsed.protocol == CHUY_PROTOCOL
    assert parsed.lines == (
        BallotLine(1, "«Ата-Мекен» саясий партиясы", False, 4906, 3.48),
        BallotLine(2, "«Бүтүн Кыргызстан» саясий партиясы", False, 9503, 6.74),
        BallotLine(21, "«Ата-Журт Кыргызстан» саясий партиясы", False, 23775, 16.86),
        # no against-all class and an empty № cell: recognised by its label
        BallotLine(None, "Баарына каршы", True, 3060, 2.17),
    )
    assert [c.segment for c in parsed.children] == ["7101", "7102"]


def test_party_names_kept_verbatim_and_duplicates_kept() -> None:
    parsed = parse_division(page("party_names_ru.html"), f"{BASE}/ru/results/jk2021/okrug-21/")

    names = [line.choice_name for line in parsed.lines]
    assert names == [
        "«Ата-Мекен»",  # surrounding whitespace and newline stripped, quotes kept
        '"Бүтүн Кыргызстан"',
        "Альянс",
        "«Патриоттук биримдик» саясий партиясы",
        "Альянс",
        "Против всех",
    ]
    # The same line twice is returned twice: the quality gate must see the duplicate.
    assert [line.choice_position for line in parsed.lines].count(3) == 2


def test_layout_table_does_not_hide_the_tables_inside_it() -> None:
    parsed = parse_division(page("layout_table_ru.html"), f"{BASE}/ru/results/jk2021/list/7/")

    assert parsed.declared_id == "7"
    assert parsed.protocol.registered == 421315
    assert parsed.protocol.precincts_total == 392
    assert parsed.lines == (BallotLine(1, "«Ата-Мекен»", False, 4906, 3.48),)
    assert [c.segment for c in parsed.children] == ["7101"]


def test_child_linked_twice_in_its_row_is_one_child() -> None:
    html = page("spec_example_ru.html").replace(
        b"<td>1 \xd0\xb8\xd0\xb7 1</td>",  # "1 из 1"
        b'<td><a href="/ru/results/jk2021/list/7101/">1 \xd0\xb8\xd0\xb7 1</a></td>',
    )
    assert html.count(b"/list/7101/") == 2
    parsed = parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")

    assert [c.segment for c in parsed.children] == ["7101"]
    assert parsed.children[0].name == "УИК №7101"


def test_page_without_results_table_is_not_an_error() -> None:
    parsed = parse_division(page("no_results_ru.html"), f"{BASE}/ru/results/jk2021/list/7101/")

    assert parsed.declared_id == "7101"
    assert parsed.has_results_table is False
    assert parsed.lines == ()
    assert parsed.protocol == ProtocolFigures()
    # breadcrumb links (outside any table) are not children
    assert parsed.children == ()


def test_maintenance_page_raises_portal_maintenance_naming_the_url() -> None:
    url = f"{BASE}/ru/results/jk2021/list/7/"
    with pytest.raises(PortalMaintenance) as excinfo:
        parse_division(page("maintenance_ru.html"), url)

    error = excinfo.value
    assert isinstance(error, PageParseError)
    assert error.url == url
    assert url in str(error)
    assert "Ведутся технические работы" in str(error)


def test_maintenance_page_with_its_own_heading_is_still_maintenance() -> None:
    html = page("maintenance_ru.html").replace(
        b"<body>", "<body><h1>Технические работы</h1>".encode()
    )
    with pytest.raises(PortalMaintenance, match="Ведутся технические работы"):
        parse_division(html, f"{BASE}/ru/results/jk2021/list/")


@pytest.mark.parametrize("parse", [parse_election, parse_election_list])
def test_maintenance_notice_instead_of_election_pages(parse) -> None:
    url = f"{BASE}/ru/results/jk2021/"
    with pytest.raises(PortalMaintenance) as excinfo:
        parse(page("maintenance_ru.html"), url)
    assert excinfo.value.url == url
    assert url in str(excinfo.value)
    assert "Ведутся технические работы" in excinfo.value.notice


def test_unreadable_results_header_names_url_and_missing_column() -> None:
    url = f"{BASE}/ru/results/jk2021/list/7/"
    with pytest.raises(PageParseError) as excinfo:
        parse_division(page("bad_header_ru.html"), url)

    error = excinfo.value
    assert not isinstance(error, PortalMaintenance)
    assert error.url == url
    assert "votes" in error.what
    assert url in str(error)
    assert "votes" in str(error)


def test_unreadable_header_without_results_class_still_raises() -> None:
    html = page("bad_header_ru.html").replace(b'class="results"', b"")
    with pytest.raises(PageParseError, match="votes"):
        parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")


def test_row_without_ballot_number_raises() -> None:
    html = page("spec_example_ru.html").replace(b"<td>2</td>", b"<td>\xe2\x80\x94</td>")
    with pytest.raises(PageParseError, match="ballot number") as excinfo:
        parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")
    assert "Бүтүн Кыргызстан" in str(excinfo.value)


def test_malformed_vote_count_raises_page_error_naming_url_and_text() -> None:
    url = f"{BASE}/ru/results/jk2021/list/7/"
    html = page("spec_example_ru.html").replace(b"4 906", b"12a4")
    with pytest.raises(PageParseError) as excinfo:
        parse_division(html, url)
    assert url in str(excinfo.value)
    assert "12a4" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, NumberFormatError)


def test_heading_missing_but_tables_present_raises() -> None:
    html = page("spec_example_ru.html").replace(b"<h1", b"<h2").replace(b"</h1>", b"</h2>")
    with pytest.raises(PageParseError, match="heading") as excinfo:
        parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")
    assert not isinstance(excinfo.value, PortalMaintenance)


# --------------------------------------------------------------------------- list pages


def test_election_list() -> None:
    parsed = parse_election_list(page("election_list_ru.html"), f"{BASE}/ru/results/")

    assert [e.segment for e in parsed.elections] == ["jk2021", "pres2021", "jk2020"]
    assert parsed.elections[0] == Link(
        "jk2021",
        "Выборы депутатов Жогорку Кенеша Кыргызской Республики 28.11.2021",
        "/ru/results/jk2021/",
    )
    # another host keeps its full URL; a link without class "election" is ignored
    assert parsed.elections[1].href == "https://shailoo.gov.kg/ru/results/pres2021/"


def test_election_page() -> None:
    parsed = parse_election(page("election_ru.html"), f"{BASE}/ru/results/jk2021/")

    assert parsed.name == "Выборы депутатов Жогорку Кенеша Кыргызской Республики 28.11.2021"
    assert parsed.date == "2021-11-28"  # the election date, not the `updated` time
    assert [c.segment for c in parsed.contests] == ["list", "okrug-1", "okrug-2"]
    assert parsed.contests[0] == Link(
        "list", "Единый общереспубликанский избирательный округ", "/ru/results/jk2021/list/"
    )


# --------------------------------------------------------------------------- replica pages


@pytest.fixture(scope="module")
def replica():
    from etl.replica.render import PortalRenderer
    from etl.replica.scenario import load_scenario

    scenario = load_scenario("kg2021")
    return scenario, PortalRenderer(scenario)


def _render(renderer, index: int, path: str) -> bytes:
    rendered = renderer.render(index, path)
    assert rendered is not None, path
    assert rendered.status == 200, path
    return rendered.body


def _assert_division_matches(scenario, index, contest, division_id, parsed, lang) -> None:
    division = contest.divisions[division_id]
    tally = scenario.tally(index, contest.contest_id, division_id)
    counted = tally.precincts_counted > 0
    assert parsed.declared_id == division.division_id
    assert parsed.level == division.level
    assert parsed.name == (division.name_ru if lang == "ru" else division.name_kg)
    assert parsed.portal_updated_at == scenario.snapshots[index].portal_time
    assert parsed.protocol == ProtocolFigures(
        registered=tally.registered,
        ballots_issued=tally.ballots_issued if counted else None,
        ballots_cast=tally.ballots_cast if counted else None,
        invalid=tally.invalid if counted else None,
        valid=tally.valid if counted else None,
        turnout_pct_published=tally.turnout_pct if counted else None,
        precincts_counted=tally.precincts_counted,
        precincts_total=tally.precincts_total,
    )
    assert parsed.has_results_table
    expected_lines: list[BallotLine] = []
    if counted:
        expected_lines = [
            BallotLine(c.position, c.name, False, v, tally.pct(v))
            for c, v in zip(contest.choices, tally.votes, strict=True)
        ]
        against_all = "Против всех" if lang == "ru" else "Баарына каршы"
        expected_lines.append(
            BallotLine(None, against_all, True, tally.against_all, tally.pct(tally.against_all))
        )
    assert parsed.lines == tuple(expected_lines)
    assert tuple(c.segment for c in parsed.children) == division.children


def _walk_contest(scenario, renderer, index: int, lang: str, contest_id: str) -> int:
    """Parse every division page of a contest, following the parsed child links."""
    contest = scenario.contests[contest_id]
    root = f"/{lang}/results/{scenario.election_id}/{contest_id}/"
    pending = [(root, contest.root_id)]
    parsed_pages = 0
    while pending:
        path, division_id = pending.pop()
        parsed = parse_division(_render(renderer, index, path), BASE + path)
        _assert_division_matches(scenario, index, contest, division_id, parsed, lang)
        parsed_pages += 1
        pending.extend((child.href, child.segment) for child in parsed.children)
    return parsed_pages


def test_replica_final_snapshot_party_list_parses_to_its_ground_truth(replica) -> None:
    scenario, renderer = replica
    final = len(scenario.snapshots) - 1
    contest = scenario.contests["list"]

    parsed_pages = _walk_contest(scenario, renderer, final, "ru", "list")

    # every division of the contest was reached through parsed child links
    assert parsed_pages == len(contest.divisions)


def test_replica_final_snapshot_kyrgyz_pages(replica) -> None:
    scenario, renderer = replica
    final = len(scenario.snapshots) - 1

    for contest_id in ("okrug-1", "okrug-36"):
        parsed_pages = _walk_contest(scenario, renderer, final, "kg", contest_id)
        assert parsed_pages == len(scenario.contests[contest_id].divisions)


def test_replica_list_and_election_pages(replica) -> None:
    scenario, renderer = replica
    final = len(scenario.snapshots) - 1

    listing = parse_election_list(_render(renderer, final, "/ru/results/"), f"{BASE}/ru/results/")
    assert [e.segment for e in listing.elections] == [scenario.election_id]
    election = parse_election(_render(renderer, final, listing.elections[0].href), BASE)
    assert election.name == scenario.election_name_ru
    assert election.date == scenario.election_date
    assert [c.segment for c in election.contests] == list(scenario.contests)


def test_replica_before_counting_shows_dashes_as_missing(replica) -> None:
    scenario, renderer = replica
    contest = scenario.contests["list"]
    path = f"/ru/results/{scenario.election_id}/list/"

    parsed = parse_division(_render(renderer, 0, path), BASE + path)

    assert parsed.protocol.precincts_counted == 0
    assert parsed.protocol.ballots_cast is None
    assert parsed.protocol.registered == scenario.tally(0, "list").registered
    _assert_division_matches(scenario, 0, contest, contest.root_id, parsed, "ru")


def test_replica_duplicate_candidate_is_returned_twice(replica) -> None:
    scenario, renderer = replica
    index = scenario.index_of("duplicate-candidate")
    duplicate = scenario.snapshots[index].duplicate
    path = f"/ru/results/{scenario.election_id}/{duplicate.contest_id}/"
    if duplicate.division_id != scenario.contests[duplicate.contest_id].root_id:
        path += f"{duplicate.division_id}/"

    parsed = parse_division(_render(renderer, index, path), BASE + path)

    positions = [line.choice_position for line in parsed.lines]
    assert positions.count(duplicate.position) == 2
    assert len(parsed.lines) == len(scenario.contests[duplicate.contest_id].choices) + 2


@pytest.mark.parametrize(
    ("path", "parse"),
    [
        ("/ru/results/jk2021/list/", parse_division),
        ("/kg/results/jk2021/list/7/", parse_division),
        ("/ru/results/jk2021/", parse_election),
        ("/ru/results/", parse_election_list),
    ],
)
def test_replica_maintenance_pages_raise(replica, path, parse) -> None:
    scenario, renderer = replica
    index = scenario.index_of("withdrawn-maintenance")

    with pytest.raises(PortalMaintenance) as excinfo:
        parse(_render(renderer, index, path), BASE + path)
    assert excinfo.value.url == BASE + path


# --------------------------------------------------------------------------- impossible numbers
# An impossible number is data for the quality gate, not unreadable markup (issue 10, item 2).


@pytest.mark.parametrize(("text", "expected"), [("-5", -5), ("−5", -5), ("- 1 182", -1182)])
def test_negative_count_is_a_number(text: str, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["12.5", "12,5", "1,5", "-0.5"])
def test_fractional_count_is_its_own_error(text: str) -> None:
    with pytest.raises(FractionalCountError) as excinfo:
        parse_count(text)
    assert isinstance(excinfo.value, NumberFormatError)
    assert repr(text) in str(excinfo.value)


def test_negative_vote_cell_is_parsed_not_a_page_failure() -> None:
    html = page("spec_example_ru.html").replace(b"4 906", b"-5")
    parsed = parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")
    assert parsed.lines[0].votes == -5
    assert parsed.fractional_counts == ()


def test_votes_above_ballots_cast_are_parsed_as_they_are() -> None:
    html = page("spec_example_ru.html").replace(b"4 906", b"999 999")
    parsed = parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")
    assert parsed.lines[0].votes == 999999 > parsed.protocol.ballots_cast  # type: ignore[operator]


def test_fractional_vote_cell_leaves_the_figure_missing_and_records_the_cell() -> None:
    html = page("spec_example_ru.html").replace(b"4 906", b"12.5")
    parsed = parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")
    assert parsed.lines[0].votes is None
    assert len(parsed.fractional_counts) == 1
    figure, text = parsed.fractional_counts[0]
    assert "votes of" in figure and "Ата-Мекен" in figure and text == "12.5"


def test_fractional_protocol_cells_are_recorded() -> None:
    html = (page("spec_example_ru.html").replace(b"140 998", b"140 998,5")
            .replace(b"371 \xd0\xb8\xd0\xb7 392", b"371,5 \xd0\xb8\xd0\xb7 392"))
    parsed = parse_division(html, f"{BASE}/ru/results/jk2021/list/7/")
    assert parsed.protocol.ballots_cast is None
    assert parsed.protocol.precincts_counted is None
    assert dict(parsed.fractional_counts) == {
        "ballots_cast": "140 998,5", "precincts_counted / precincts_total": "371,5 из 392"}


# --------------------------------------------------------------------------- encodings


def _cp1251(html: bytes, *, meta: bool) -> bytes:
    text = html.decode("utf-8")
    text = text.replace('<meta charset="utf-8">', '<meta charset="windows-1251">' if meta else "")
    # Kyrgyz letters (ү, ө, ң) are not in windows-1251: such a page writes them as entities.
    return text.encode("windows-1251", errors="xmlcharrefreplace")


def test_windows_1251_page_with_declared_encoding_parses_like_utf8() -> None:
    url = f"{BASE}/ru/results/jk2021/list/7/"
    utf8 = parse_division(page("spec_example_ru.html"), url)
    body = _cp1251(page("spec_example_ru.html"), meta=False)
    assert page_encoding("text/html; charset=windows-1251", body) == ("windows-1251", "header")
    assert parse_division(body, url, "windows-1251") == utf8


def test_encoding_from_meta_then_detected() -> None:
    with_meta = _cp1251(page("spec_example_ru.html"), meta=True)
    assert page_encoding("text/html", with_meta) == ("windows-1251", "meta")
    # A header that lies (utf-8 for a cp1251 body) loses to the <meta>.
    assert page_encoding("text/html; charset=utf-8", with_meta) == ("windows-1251", "meta")
    bare = _cp1251(page("spec_example_ru.html"), meta=False)
    encoding, source = page_encoding(None, bare)
    assert source == "detected"
    assert "Чуйская" in bare.decode(encoding)
    assert page_encoding("text/html; charset=utf-8", page("spec_example_ru.html")) == (
        "utf-8", "header")
    url = f"{BASE}/ru/results/jk2021/list/7/"
    # Without an encoding given, the parser sniffs the same way.
    assert parse_division(bare, url) == parse_division(page("spec_example_ru.html"), url)


def test_a_single_byte_label_on_a_utf8_body_loses_to_the_body() -> None:
    body = page("spec_example_ru.html")  # its <meta> says utf-8, rightly
    assert page_encoding("text/html; charset=iso-8859-1", body) == ("utf-8", "meta")
    bare = body.replace(b'<meta charset="utf-8">', b"")
    assert page_encoding("text/html; charset=iso-8859-1", bare) == ("utf-8", "detected")
    assert page_encoding("text/html; charset=windows-1251", bare) == ("utf-8", "detected")
