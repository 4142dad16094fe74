"""Parse portal pages (bytes) into typed records, by meaning rather than by position.

The markup contract is `shared/portal/SPEC.md`, section A. Tables are found by their header
text and row labels (Russian and Kyrgyz), numbers are accepted in every format the SPEC
lists, and a missing value is `None`, never zero. Every function here is pure: bytes in,
records out, so the whole scrape can be re-parsed from the raw archive.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from urllib.parse import urljoin, urlsplit

from bs4 import BeautifulSoup, SoupStrainer
from bs4.element import NavigableString, Tag

from etl.records import (
    BallotLine,
    DivisionPage,
    ElectionListPage,
    ElectionPage,
    Link,
    ProtocolFigures,
)

logger = logging.getLogger(__name__)

# Kyrgyzstan has been UTC+06:00 all year since 2005 (no DST), so a portal time without an
# offset can only mean Bishkek time.
BISHKEK_TZ = timezone(timedelta(hours=6), "Asia/Bishkek")

# Only these elements matter on a division page; building the tree for nothing else
# roughly halves parse time (the scrape parses ~5,000 pages per snapshot).
_DIVISION_STRAINER = SoupStrainer(["h1", "time", "table"])
_CELL_NAMES = frozenset({"td", "th"})
_SECTION_NAMES = frozenset({"thead", "tbody", "tfoot"})
# Whitespace before a table-structure tag is insignificant in HTML's table content model;
# dropping it before parsing saves a text node per tag (a measurable share of the parse).
_TABLE_WHITESPACE = re.compile(rb">\s+(?=</?t(?:[rdh]|body|head|foot|able)\b)")
_LINK_STRAINER = SoupStrainer(["a", "h1", "title", "time"])

# "No data" marks: em dash, en dash, hyphen-minus, minus sign, figure dash, horizontal bar.
_DASHES = frozenset({"—", "–", "-", "−", "‒", "―", "--"})
_COUNT_RE = re.compile(r"[-−]?[0-9]+")
# A count written with a fraction ("12.5", "12,5"): a number, but not a count.
_FRACTION_RE = re.compile(r"[-−]?[0-9]+[.,][0-9]+")
_PERCENT_RE = re.compile(r"[-−]?[0-9]+(?:[.,][0-9]+)?")
# "371 из 392", "371 / 392", "371 of 392"; Kyrgyz puts the whole first: "392 ичинен 371".
_OF_RE = re.compile(r"^(?P<a>.*?)\s*(?:\b(?P<word>из|of)\b|(?P<slash>/))\s*(?P<b>.*)$", re.I)
_KG_OF_RE = re.compile(r"^(?P<total>.*?)\s*\bичинен\b\s*(?P<counted>.*)$", re.I)
_DMY_RE = re.compile(
    r"(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4})"
    r"(?:[ T,]+(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?)?"
)


class NumberFormatError(ValueError):
    """A table cell that should hold a number but does not."""

    def __init__(self, text: str, kind: str) -> None:
        self.text = text
        super().__init__(f"not a {kind}: {text!r}")


class FractionalCountError(NumberFormatError):
    """A count cell holding a fraction: data (an impossible figure), not unreadable markup."""

    def __init__(self, text: str) -> None:
        super().__init__(text, "count (it has a fraction)")


class PageParseError(Exception):
    """A page that does not follow the portal contract; names the URL and what was missing."""

    def __init__(self, url: str, what: str, detail: str = "") -> None:
        self.url = url
        self.what = what
        message = f"{url or '<no url>'}: {what}"
        super().__init__(f"{message} ({detail})" if detail else message)


class PortalMaintenance(PageParseError):
    """A 200 page with a notice instead of the content its URL should show."""

    def __init__(
        self, url: str, notice: str, what: str = "division heading and tables"
    ) -> None:
        self.notice = notice
        super().__init__(url, f"{what}: a maintenance or notice page", notice)


# --------------------------------------------------------------------------- numbers


def _compact(text: str) -> str:
    # str.split() splits on every Unicode space (U+00A0, U+202F, U+2009 included) in C.
    return "".join(text.split())


def parse_count(text: str | None) -> int | None:
    """Parse a count such as `1 182 291` (any space separator); dash or empty -> None.

    An impossible count is still a number and is returned as one: a negative count
    (`-5`) is parsed, and left to the quality gate (C5). A count with a fraction raises
    `FractionalCountError`: an integer cannot carry it (see `parse_division`).
    """
    if text is None:
        return None
    if text.isdigit() and text.isascii():
        return int(text)  # the common case, without separators
    compact = _compact(text)
    if not compact or compact in _DASHES:
        return None
    if _COUNT_RE.fullmatch(compact) is None:
        if _FRACTION_RE.fullmatch(compact) is not None:
            raise FractionalCountError(text)
        raise NumberFormatError(text, "count")
    return int(compact.replace("−", "-"))


def parse_percent(text: str | None) -> float | None:
    """Parse a percentage such as `3,48%`, `3.48 %` or `3.48`; dash or empty -> None."""
    if text is None:
        return None
    compact = _compact(text)
    if compact.endswith("%"):
        compact = compact[:-1]
    if not compact or compact in _DASHES:
        return None
    if _PERCENT_RE.fullmatch(compact) is None:
        raise NumberFormatError(text, "percentage")
    return float(compact.replace(",", ".").replace("−", "-"))


def parse_counted_of_total(text: str | None) -> tuple[int | None, int | None]:
    """Parse `N из M`, `N / M`, `M ичинен N` (counted, total); a lone number is counted."""
    if text is None:
        return None, None
    stripped = text.strip()
    kg = _KG_OF_RE.match(stripped)
    if kg is not None:
        return parse_count(kg["counted"]), parse_count(kg["total"])
    of = _OF_RE.match(stripped)
    if of is not None:
        return parse_count(of["a"]), parse_count(of["b"])
    return parse_count(stripped), None


# --------------------------------------------------------------------------- labels


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("ё", "е").split())


# Each rule: field name and alternatives; an alternative matches when all its keywords
# occur in the normalised label. Order matters: "недействительных" contains
# "действительных", and "бюллетень алган"/"катышкан" must win before turnout/registered.
_PROTOCOL_RULES: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("invalid", (("недействительн",), ("жараксыз",), ("invalid",))),
    ("valid", (("действительн",), ("жарактуу",), ("valid",))),
    (
        "ballots_issued",
        (("получивш",), ("выдан",), ("бюллетен", "алган"), ("issued",)),
    ),
    (
        "ballots_cast",
        (
            ("принявш",),
            ("участие в голосовании",),
            ("проголосовавш",),
            ("катышкан",),
            ("ballots cast",),
        ),
    ),
    ("turnout_pct_published", (("явка",), ("катышуу",), ("turnout",))),
    ("precincts", (("обработан",), ("протокол",), ("иштелип чыккан",))),
    (
        "registered",
        (("внесенных в список",), ("включенных в список",), ("в списк",), ("тизме",)),
    ),
)


_PROTOCOL_KEYWORDS = tuple(
    (name, keywords) for name, alternatives in _PROTOCOL_RULES for keywords in alternatives
)


def _protocol_field(label: str) -> str | None:
    norm = _norm(label)
    for name, keywords in _PROTOCOL_KEYWORDS:
        if keywords[0] in norm and all(k in norm for k in keywords[1:]):
            return name
    return None


_AGAINST_ALL_LABELS = ("против всех", "баарына каршы", "against all")

_COL_POSITION = "№ (ballot number)"
_COL_NAME = "name (Наименование / Аталышы / Кандидат / Партия)"
_COL_VOTES = "votes (Число голосов / Добуш)"
_COL_PCT = "% (percentage)"


def _column_kind(header: str) -> str | None:
    norm = _norm(header)
    if not norm:
        return None
    # "%" first: a header such as "% голосов" is the percentage, not the votes column.
    if "%" in norm or "процент" in norm or "пайыз" in norm:
        return _COL_PCT
    if "№" in norm or norm in {"#", "no", "no.", "n"}:
        return _COL_POSITION
    if "голос" in norm or "добуш" in norm or "votes" in norm:
        return _COL_VOTES
    if any(
        k in norm
        # Not the bare Kyrgyz "аты" (name): it is a substring of "катышуу" (turnout).
        for k in ("наименован", "аталыш", "кандидат", "талапкер", "парти", "name", "аты-жөн")
    ):
        return _COL_NAME
    return None


# --------------------------------------------------------------------------- encodings

_CHARSET_RE = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.I)
_META_CHARSET_RE = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.I)
# A <meta> charset must come early in the document (HTML: in the first 1024 bytes); we
# look a little further for pages with long heads.
_META_SCAN_BYTES = 4096
ENCODING_HEADER, ENCODING_META, ENCODING_DETECTED = "header", "meta", "detected"


def _known_encoding(label: str | None) -> str | None:
    if not label:
        return None
    try:
        codecs.lookup(label)
    except LookupError:
        return None
    return label.lower()


def _decodes(body: bytes, encoding: str) -> bool:
    try:
        body.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def _utf8_mislabelled(body: bytes, declared: str) -> bool:
    if codecs.lookup(declared).name in ("utf-8", "utf-8-sig") or body.isascii():
        return False
    return _decodes(body, "utf-8")


def page_encoding(content_type: str | None, body: bytes) -> tuple[str, str]:
    """The encoding to read a page with, and how it was chosen: header, meta or detected.

    The charset of `Content-Type` first, then a `<meta>` charset, each only if the body
    decodes with it; otherwise UTF-8 when the body is valid UTF-8, else what
    charset-normalizer finds. A single-byte declaration (latin-1 decodes anything) loses
    to a body that is valid, non-ASCII UTF-8: legacy text is almost never that.
    """
    declared = _CHARSET_RE.search(content_type or "")
    header = _known_encoding(declared.group(1) if declared else None)
    if header is not None and _decodes(body, header) and not _utf8_mislabelled(body, header):
        return header, ENCODING_HEADER
    meta_match = _META_CHARSET_RE.search(body[:_META_SCAN_BYTES])
    meta = _known_encoding(meta_match.group(1).decode("ascii") if meta_match else None)
    if meta is not None and _decodes(body, meta) and not _utf8_mislabelled(body, meta):
        return meta, ENCODING_META
    if _decodes(body, "utf-8"):
        return "utf-8", ENCODING_DETECTED
    from charset_normalizer import from_bytes

    best = from_bytes(body).best()
    return (best.encoding if best is not None else "utf-8"), ENCODING_DETECTED


# --------------------------------------------------------------------------- helpers


def _soup(html: bytes, strainer: SoupStrainer | None, encoding: str | None) -> BeautifulSoup:
    # Declaring the encoding skips bs4's charset sniffing: the fetcher chose it from the
    # response's header or <meta> (see page_encoding), or we do the same here.
    if encoding is None:
        encoding = page_encoding(None, html)[0]
    return BeautifulSoup(html, "lxml", from_encoding=encoding, parse_only=strainer)


def _text(tag: Tag) -> str:
    # Most cells hold one plain string; get_text() walks a generator for every cell, which
    # on a 200-cell page costs more than the rest of the traversal.
    contents = tag.contents
    if len(contents) == 1 and contents[0].__class__ is NavigableString:
        return str(contents[0])
    return tag.get_text()


def _cells(row: Tag) -> list[Tag]:
    return [c for c in row.contents if c.__class__ is Tag and c.name in _CELL_NAMES]


def _rows(table: Tag) -> list[Tag]:
    """The table's own rows (in thead/tbody/tfoot or direct), not those of nested tables."""
    rows: list[Tag] = []
    for child in table.contents:
        if child.__class__ is not Tag:
            continue
        if child.name == "tr":
            rows.append(child)
        elif child.name in _SECTION_NAMES:
            rows.extend(r for r in child.contents if r.__class__ is Tag and r.name == "tr")
    return rows


def _descendant_tags(tag: Tag, name: str) -> list[Tag]:
    return [d for d in tag.descendants if d.__class__ is Tag and d.name == name]


def _classes(tag: Tag) -> Sequence[str]:
    value = tag.get("class")
    if value is None:
        return ()
    return value if isinstance(value, list) else str(value).split()


def _attr(tag: Tag, name: str) -> str | None:
    value = tag.get(name)
    if value is None:
        return None
    return value if isinstance(value, str) else " ".join(value)


def _resolve(url: str, href: str) -> str:
    """`href` resolved against the page URL, as a root-relative path when on the same host."""
    if href.startswith("/") and not href.startswith("//"):
        return href
    target = urlsplit(urljoin(url, href))
    if target.netloc and target.netloc != urlsplit(url).netloc:
        return target.geturl()  # another host: only a full URL can reach it
    return target.path + (f"?{target.query}" if target.query else "")


def _path_segments(href: str) -> list[str]:
    return [s for s in urlsplit(href).path.split("/") if s]


# --------------------------------------------------------------------------- list pages


def parse_election_list(html: bytes, url: str, encoding: str | None = None) -> ElectionListPage:
    """Parse `/{lang}/results/`: every `a.election`, segment = election id from the href."""
    soup = _soup(html, _LINK_STRAINER, encoding)
    elections: list[Link] = []
    seen: set[str] = set()
    for anchor in soup.find_all("a", class_="election"):
        href = _attr(anchor, "href")
        if not href:
            raise PageParseError(url, "href of an a.election link", _text(anchor).strip())
        href = _resolve(url, href)
        segments = _path_segments(href)
        # /{lang}/results/{election_id}/: the id is the segment after "results".
        if "results" in segments and segments.index("results") + 1 < len(segments):
            segment = segments[segments.index("results") + 1]
        elif segments:
            segment = segments[-1]
        else:
            raise PageParseError(url, "election id in a.election href", href)
        if segment in seen:  # the same election linked twice (menu and body)
            continue
        seen.add(segment)
        elections.append(Link(segment=segment, name=_text(anchor).strip(), href=href))
    if not elections:
        # Nothing to crawl: during maintenance the portal serves a notice on every URL.
        raise PortalMaintenance(url, _notice_text(html, encoding), "election links (a.election)")
    return ElectionListPage(elections=tuple(elections))


def parse_election(html: bytes, url: str, encoding: str | None = None) -> ElectionPage:
    """Parse `/{lang}/results/{election_id}/`: its name, date and `a.contest` links.

    `encoding` is the one the fetcher chose (`page_encoding`); None sniffs it here.
    """
    soup = _soup(html, _LINK_STRAINER, encoding)
    date: str | None = None
    # The page may also carry the portal's `updated` time, which is not the election date.
    times = [t for t in soup.find_all("time") if "updated" not in _classes(t)]
    if times:
        date = _attr(times[0], "datetime") or _text(times[0]).strip() or None
    contests: list[Link] = []
    seen: set[str] = set()
    for anchor in soup.find_all("a", class_="contest"):
        href = _resolve(url, _attr(anchor, "href") or "")
        segment = _attr(anchor, "data-contest")
        if not segment:
            segments = _path_segments(href)
            if not segments:
                raise PageParseError(url, "contest id (data-contest or href)", _text(anchor))
            segment = segments[-1]
        if segment in seen:
            continue
        seen.add(segment)
        contests.append(Link(segment=segment, name=_text(anchor).strip(), href=href))
    if not contests:
        # An election page without contests is what a maintenance notice looks like.
        raise PortalMaintenance(url, _notice_text(html, encoding), "contest links (a.contest)")
    heading = soup.find("h1")
    title = soup.find("title")
    if isinstance(heading, Tag):
        name = " ".join(_text(heading).split())
    elif isinstance(title, Tag):
        name = " ".join(_text(title).split())
    else:
        raise PageParseError(url, "election name (<h1> or <title>)")
    return ElectionPage(name=name, date=date, contests=tuple(contests))


# --------------------------------------------------------------------------- division


def _parse_updated(tag: Tag | None, url: str) -> datetime | None:
    if tag is None:
        return None
    raw = _attr(tag, "datetime")
    if raw:
        try:
            value = datetime.fromisoformat(raw.strip())
        except ValueError as exc:
            raise PageParseError(url, "valid <time datetime>", raw) from exc
    else:
        text = _text(tag).strip()
        match = _DMY_RE.search(text)
        if match is None:
            raise PageParseError(url, "updated time (<time datetime> or dd.mm.yyyy hh:mm)", text)
        value = datetime(
            int(match["y"]),
            int(match["m"]),
            int(match["d"]),
            int(match["H"] or 0),
            int(match["M"] or 0),
            int(match["S"] or 0),
        )
    if value.tzinfo is None:
        # A naive time is useless for ordering snapshots; the portal shows Bishkek time.
        value = value.replace(tzinfo=BISHKEK_TZ)
    return value


def _header_columns(table: Tag) -> tuple[Tag | None, dict[str, int], list[Tag]]:
    """Find the header row of a table and map column kinds to cell indexes."""
    rows = _rows(table)
    header: Tag | None = None
    header_cells: list[Tag] = []
    for row in rows:
        cells = _cells(row)
        in_thead = row.parent is not None and row.parent.name == "thead"
        if in_thead or any(c.name == "th" for c in cells):
            header, header_cells = row, cells
            break
    if header is None:
        return None, {}, rows
    columns: dict[str, int] = {}
    for index, cell in enumerate(header_cells):
        kind = _column_kind(_text(cell))
        if kind is not None and kind not in columns:
            columns[kind] = index
    body = rows[rows.index(header) + 1 :]
    return header, columns, body


def _is_against_all(row: Tag, name: str) -> bool:
    if "against-all" in _classes(row):
        return True
    lowered = name.lower()
    if "всех" not in lowered and "каршы" not in lowered and "against" not in lowered:
        return False  # the usual party row, without normalising it
    norm = _norm(name)
    return any(label in norm for label in _AGAINST_ALL_LABELS)


def _parse_results(
    table: Tag, columns: dict[str, int], body: Iterable[Tag], url: str,
    fractional: list[tuple[str, str]],
) -> tuple[BallotLine, ...]:
    for required in (_COL_POSITION, _COL_NAME, _COL_VOTES):
        if required not in columns:
            raise PageParseError(url, f"results column {required}")
    pos_i, name_i, votes_i = columns[_COL_POSITION], columns[_COL_NAME], columns[_COL_VOTES]
    pct_i = columns.get(_COL_PCT)
    needed = max(pos_i, name_i, votes_i)
    lines: list[BallotLine] = []
    for row in body:
        cells = _cells(row)
        if not cells or all(c.name == "th" for c in cells):
            continue  # a repeated header row
        if len(cells) <= needed:
            raise PageParseError(
                url, "cells of a results row", " | ".join(_text(c).strip() for c in cells)
            )
        name = _text(cells[name_i]).strip()
        against_all = _is_against_all(row, name)
        position: int | None = None
        if not against_all:
            raw_position = _text(cells[pos_i])
            try:
                position = parse_count(raw_position.strip().rstrip("."))
            except NumberFormatError:
                position = None
            if position is None or position < 0:
                raise PageParseError(
                    url, "a ballot number (№) in a results row", f"{raw_position!r}, {name!r}"
                )
        try:
            votes_text = _text(cells[votes_i])
            try:
                votes = parse_count(votes_text)
            except FractionalCountError:
                votes = None
                fractional.append((f"votes of {name}", votes_text.strip()))
            pct = (
                parse_percent(_text(cells[pct_i]))
                if pct_i is not None and pct_i < len(cells)
                else None
            )
        except NumberFormatError as exc:
            raise PageParseError(url, f"a number in the row of {name!r}", str(exc)) from exc
        lines.append(BallotLine(position, name, against_all, votes, pct))
    return tuple(lines)


def _take_results(
    previous: Tag | None, table: Tag, columns: dict[str, int], body: Iterable[Tag], url: str,
    fractional: list[tuple[str, str]],
) -> tuple[BallotLine, ...]:
    if previous is not None:
        # Two results tables would make "the" result of the division ambiguous.
        raise PageParseError(url, "a single results table", "found two")
    return _parse_results(table, columns, body, url, fractional)


def _protocol_rows(table: Tag) -> list[tuple[str, str, str]]:
    """(field, label, value) for every row of a table whose label is a protocol label."""
    return protocol_rows_from_cells([_text(cell) for cell in _cells(row)] for row in _rows(table))


def unique_links(children: Iterable[Link]) -> tuple[Link, ...]:
    """Child links in order, each segment once: the same child linked twice in a row
    (name and "details") is one child page."""
    seen: set[str] = set()
    unique: list[Link] = []
    for link in children:
        if link.segment not in seen:
            seen.add(link.segment)
            unique.append(link)
    return tuple(unique)


def protocol_rows_from_cells(rows: Iterable[Sequence[str]]) -> list[tuple[str, str, str]]:
    """(field, label, value) of the protocol rows among rows of cell texts.

    Shared by both parsers (BeautifulSoup here, lxml in `etl.fastparse`); an unknown label
    is a WARNING, since a renamed row would otherwise pass unnoticed.
    """
    found: list[tuple[str, str, str]] = []
    for cells in rows:
        if not cells:
            continue
        if len(cells) >= 2:
            label, value = cells[0], cells[-1]
        else:
            # "Иштелип чыккан протоколдор: 371 / 392" in a single cell.
            label, _, value = cells[0].rpartition(":")
            if not label:
                continue
        name = _protocol_field(label)
        if name is not None:
            found.append((name, label.strip(), value))
        else:
            logger.warning("protocol row not recognised: %r", label.strip())
    return found


def _parse_protocol(
    rows: Iterable[tuple[str, str, str]], url: str, fractional: list[tuple[str, str]]
) -> ProtocolFigures:
    values: dict[str, int | float | None] = {}
    for name, label, value in rows:
        parsed: dict[str, int | float | None]
        try:
            if name == "precincts" and _has_fraction(value):
                fractional.append(("precincts_counted / precincts_total", value.strip()))
                parsed = {"precincts_counted": None, "precincts_total": None}
            elif name == "precincts":
                counted, total = parse_counted_of_total(value)
                parsed = {"precincts_counted": counted, "precincts_total": total}
            elif name == "turnout_pct_published":
                parsed = {name: parse_percent(value)}
            else:
                try:
                    parsed = {name: parse_count(value)}
                except FractionalCountError:
                    fractional.append((name, value.strip()))
                    parsed = {name: None}
        except NumberFormatError as exc:
            raise PageParseError(url, f"a number in protocol row {label!r}", str(exc)) from exc
        for key, number in parsed.items():
            if key in values and values[key] != number:
                raise PageParseError(
                    url, f"one value for protocol figure {key}", f"{values[key]} vs {number}"
                )
            values[key] = number
    return ProtocolFigures(**values)  # type: ignore[arg-type]


def _has_fraction(value: str) -> bool:
    """Whether an `N из M` cell holds a fraction in either number."""
    try:
        parse_counted_of_total(value)
    except FractionalCountError:
        return True
    except NumberFormatError:
        return False
    return False


def _contest_prefix(url: str) -> str:
    """Path prefix under which a contest's division pages live (SPEC A path table)."""
    segments = _path_segments(url)
    # /{lang}/results/{election_id}/{contest_id}/...: divisions are flat under the contest.
    if "results" in segments:
        cut = segments.index("results") + 3
        if len(segments) >= cut:
            return "/" + "/".join(segments[:cut]) + "/"
    return "/" + "/".join(segments[:-1]) + "/" if segments else "/"


def _child_links(table: Tag, url: str) -> list[Link]:
    """Links of a table that lead to other division pages of the same contest."""
    page = urlsplit(url)
    page_path = page.path if page.path.endswith("/") else page.path + "/"
    prefix = _contest_prefix(url)
    links: list[Link] = []
    for anchor in _descendant_tags(table, "a"):
        href = _attr(anchor, "href")
        if not href:
            continue
        href = _resolve(url, href)
        if "://" in href:
            continue  # another host is not a division of this contest
        path = href.partition("?")[0].partition("#")[0]
        if not path.endswith("/"):
            path += "/"
        # A child is another page of this contest, deeper than the contest root; the
        # breadcrumb's ancestors are outside tables, and the page itself is excluded.
        if not path.startswith(prefix) or path in (prefix, page_path):
            continue
        segments = _path_segments(path)
        links.append(Link(segment=segments[-1], name=_text(anchor).strip(), href=href))
    return links


def _notice_text(html: bytes, encoding: str | None) -> str:
    soup = _soup(html, None, encoding)
    body = soup.body or soup
    for tag in body.find_all(["script", "style"]):
        tag.decompose()
    return " ".join(body.get_text(" ").split())[:500]


def parse_division(html: bytes, url: str, encoding: str | None = None) -> DivisionPage:
    """Parse a division page: heading, updated time, protocol, results and child links.

    `encoding` is the one the fetcher chose (`page_encoding`); None sniffs it here.
    """
    if encoding is None:
        encoding = page_encoding(None, html)[0]
    soup = _soup(_TABLE_WHITESPACE.sub(b">", html), _DIVISION_STRAINER, encoding)
    # The strainer puts every h1/time/table at the top of the tree unless one is nested in
    # a table (a layout table); only then is a walk over all descendants needed.
    top = [e for e in soup.contents if e.__class__ is Tag]
    nested = html.lower().count(b"<table") > sum(1 for e in top if e.name == "table")
    if nested or not any(e.name == "h1" for e in top):
        top = [e for e in soup.descendants if e.__class__ is Tag]
    headings = [e for e in top if e.name == "h1"]
    times = [e for e in top if e.name == "time"]
    tables = [e for e in top if e.name == "table"]
    time_tag = next((t for t in times if "updated" in _classes(t)), None) or next(
        iter(times), None
    )
    # A division heading declares its id; a bare <h1> counts only next to an updated time,
    # since a maintenance notice may well have a heading of its own.
    heading = next((h for h in headings if h.has_attr("data-division-id")), None)
    if heading is None and time_tag is not None and headings:
        heading = headings[0]
    # A layout table wrapping the content must not hide the tables inside it.
    outer: set[int] = set()
    for table in tables:
        parent = table.parent
        while parent is not None:
            if parent.name == "table":
                outer.add(id(parent))
            parent = parent.parent
    tables = [t for t in tables if id(t) not in outer]
    if heading is None:
        if not tables:
            raise PortalMaintenance(url, _notice_text(html, encoding))
        raise PageParseError(url, "division heading (<h1 data-division-id>)")
    updated = _parse_updated(time_tag, url)

    results_table: Tag | None = None
    fractional: list[tuple[str, str]] = []
    lines: tuple[BallotLine, ...] = ()
    protocol_rows: list[tuple[str, str, str]] = []
    children: list[Link] = []
    for table in tables:
        _, columns, body = _header_columns(table)
        # A results table is recognised by its header. Its class, or a header that names
        # most of the columns, only says that a header we cannot fully read belongs to a
        # results table, which must then fail loudly instead of being skipped.
        strong = _COL_VOTES in columns and (_COL_NAME in columns or _COL_POSITION in columns)
        if strong or "results" in _classes(table):
            lines = _take_results(results_table, table, columns, body, url, fractional)
            results_table = table
            continue
        links = _child_links(table, url)
        if links:
            children.extend(links)
            continue
        if len(columns) >= 3:
            lines = _take_results(results_table, table, columns, body, url, fractional)
            results_table = table
            continue
        protocol_rows.extend(_protocol_rows(table))

    return DivisionPage(
        declared_id=_attr(heading, "data-division-id"),
        level=_attr(heading, "data-level"),
        name=" ".join(_text(heading).split()),
        portal_updated_at=updated,
        protocol=_parse_protocol(protocol_rows, url, fractional),
        has_results_table=results_table is not None,
        lines=lines,
        children=unique_links(children),
        fractional_counts=tuple(fractional),
    )
