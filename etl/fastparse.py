"""A fast path for division pages shaped as SPEC.md section A, with lxml and no BeautifulSoup.

`etl.parse.parse_division` (BeautifulSoup) stays the parser of record. This module reads
the pages the portal actually serves — one `h1[data-division-id]`, one `time.updated`
with a `datetime`, flat tables, no comments or scripts — with the same rules (it uses
the parser of record's label, column and number functions), about ten times faster.
Anything it is not sure of — an unusual layout, an error, a number it cannot read —
makes it give up with `NotSpecShaped`, and `parse_division_page` hands the page to the
parser of record, which either reads it or raises the error a person will see. A
differential test (tests/test_fastparse.py) asserts both paths give identical records
on every page of the replica's snapshots, the fixtures and the fault pages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit

from lxml import etree

from etl.parse import (
    _AGAINST_ALL_LABELS,
    _COL_NAME,
    _COL_PCT,
    _COL_POSITION,
    _COL_VOTES,
    _TABLE_WHITESPACE,
    BISHKEK_TZ,
    NumberFormatError,
    PageParseError,
    _column_kind,
    _contest_prefix,
    _norm,
    _parse_protocol,
    _path_segments,
    _resolve,
    parse_count,
    parse_division,
    parse_percent,
    protocol_rows_from_cells,
    unique_links,
)
from etl.records import BallotLine, DivisionPage, Link, ProtocolFigures


class NotSpecShaped(Exception):
    """The fast path cannot vouch for this page; the parser of record must read it."""


# Markup the fast path does not model: comments and scripts (their text is not content),
# CDATA, processing instructions, NUL bytes, nested or framed documents.
# Matched against the page lowered (ASCII only, as re.I would): a pattern that starts with
# one literal "<" is scanned for in C, ~5x faster than the same alternation with re.I.
_UNMODELLED = re.compile(rb"<(?:!--|script|style|!\[cdata|\?|iframe|template|frame)|\x00")
_CELL_TAGS = frozenset({"td", "th"})
_SECTION_TAGS = frozenset({"thead", "tbody", "tfoot"})
_PARSER = etree.HTMLParser(encoding="utf-8", remove_blank_text=False, no_network=True,
                           recover=True)


def parse_division_page(
    html: bytes, url: str, encoding: str | None = None,
) -> tuple[DivisionPage, bool]:
    """Parse a division page, fast when it is SPEC-shaped; (page, whether it fell back).

    Raises what `etl.parse.parse_division` raises: the parser of record decides every
    page the fast path does not read, and every page declared in an encoding other than
    UTF-8 (`encoding` is what the fetcher chose from the headers, `<meta>` or detection).
    """
    if encoding is not None and encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        return parse_division(html, url, encoding), True
    try:
        return parse_division_fast(html, url), False
    except NotSpecShaped:
        return parse_division(html, url, encoding), True


def parse_division_fast(html: bytes, url: str) -> DivisionPage:
    """The fast path alone: a SPEC-shaped division page, or `NotSpecShaped`."""
    if _UNMODELLED.search(html.lower()) is not None:
        raise NotSpecShaped("markup the fast path does not model")
    try:
        html.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotSpecShaped("not UTF-8") from exc
    root = etree.fromstring(_TABLE_WHITESPACE.sub(b">", html), _PARSER)
    if root is None:
        raise NotSpecShaped("empty document")
    headings: list[etree._Element] = []
    times: list[etree._Element] = []
    tables: list[etree._Element] = []
    for element in root.iter("h1", "time", "table"):
        {"h1": headings, "time": times, "table": tables}[element.tag].append(element)
    for table in tables:
        for inner in table.iter("h1", "time", "table"):
            if inner is not table:
                raise NotSpecShaped("a heading, time or table inside a table")
    heading = next((h for h in headings if h.get("data-division-id") is not None), None)
    time_tag = next((t for t in times if "updated" in _classes(t)), None)
    if time_tag is None and times:
        time_tag = times[0]
    if heading is None or time_tag is None:
        raise NotSpecShaped("no division heading or no updated time")
    try:
        return _division(heading, time_tag, tables, url)
    except (PageParseError, NumberFormatError, ValueError) as exc:
        raise NotSpecShaped(str(exc)) from exc


def _division(heading: etree._Element, time_tag: etree._Element,
              tables: Sequence[etree._Element], url: str) -> DivisionPage:
    raw_time = time_tag.get("datetime")
    if not raw_time:
        raise NotSpecShaped("updated time without a datetime attribute")
    updated = datetime.fromisoformat(raw_time.strip())
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=BISHKEK_TZ)

    results_found = False
    lines: tuple[BallotLine, ...] = ()
    protocol_rows: list[tuple[str, str, str]] = []
    children: list[Link] = []
    for table in tables:
        columns, body = _header_columns(table)
        strong = _COL_VOTES in columns and (_COL_NAME in columns or _COL_POSITION in columns)
        named = strong or "results" in _classes(table)
        # As the parser of record decides: a results table by its header or class, else
        # links, else a results table by its width, else protocol rows.
        links = [] if named else _child_links(table, url)
        if links:
            children.extend(links)
        elif named or len(columns) >= 3:
            if results_found:
                raise NotSpecShaped("two results tables")
            lines = _results(columns, body, url)
            results_found = True
        else:
            protocol_rows.extend(_protocol_rows(table))

    return DivisionPage(
        declared_id=heading.get("data-division-id"),
        level=heading.get("data-level"),
        name=" ".join(_text(heading).split()),
        portal_updated_at=updated,
        protocol=_protocol(protocol_rows, url),
        has_results_table=results_found,
        lines=lines,
        children=unique_links(children),
    )


def _classes(element: etree._Element) -> list[str]:
    value = element.get("class")
    return value.split() if value else []


def _text(element: etree._Element) -> str:
    if len(element) == 0:
        return element.text or ""
    return str(element.xpath("string()"))


def _rows(table: etree._Element) -> list[etree._Element]:
    rows: list[etree._Element] = []
    for child in table:
        tag = child.tag
        if tag == "tr":
            rows.append(child)
        elif tag in _SECTION_TAGS:
            rows.extend(r for r in child if r.tag == "tr")
        elif not isinstance(tag, str):
            raise NotSpecShaped("a node the fast path does not model in a table")
    return rows


def _cells(row: etree._Element) -> list[etree._Element]:
    return [c for c in row if c.tag in _CELL_TAGS]


def _header_columns(table: etree._Element) -> tuple[dict[str, int], list[etree._Element]]:
    rows = _rows(table)
    for index, row in enumerate(rows):
        cells = _cells(row)
        parent = row.getparent()
        if (parent is not None and parent.tag == "thead") or any(c.tag == "th" for c in cells):
            columns: dict[str, int] = {}
            for position, cell in enumerate(cells):
                kind = _column_kind(_text(cell))
                if kind is not None and kind not in columns:
                    columns[kind] = position
            return columns, rows[index + 1:]
    return {}, rows


def _results(columns: dict[str, int], body: Sequence[etree._Element],
             url: str) -> tuple[BallotLine, ...]:
    for required in (_COL_POSITION, _COL_NAME, _COL_VOTES):
        if required not in columns:
            raise NotSpecShaped(f"results column {required}")
    pos_i, name_i, votes_i = columns[_COL_POSITION], columns[_COL_NAME], columns[_COL_VOTES]
    pct_i = columns.get(_COL_PCT)
    needed = max(pos_i, name_i, votes_i)
    lines: list[BallotLine] = []
    for row in body:
        # One pass over the row's children: its cells' texts, and whether one is a td.
        texts: list[str] = []
        has_td = False
        for child in row:
            tag = child.tag
            if tag in _CELL_TAGS:
                has_td = has_td or tag == "td"
                texts.append((child.text or "") if len(child) == 0 else _text(child))
        if not has_td:
            continue  # empty, or a header row
        if len(texts) <= needed:
            raise NotSpecShaped("a short results row")
        name = texts[name_i].strip()
        row_class = row.get("class")
        against_all = (row_class is not None and "against-all" in row_class.split()
                       ) or _is_against_all_label(name)
        position: int | None = None
        if not against_all:
            position = _count(texts[pos_i].strip().rstrip("."))
            if position is None:
                raise NotSpecShaped("a results row without a ballot number")
        votes = _count(texts[votes_i])
        pct = _percent(texts[pct_i]) if pct_i is not None and pct_i < len(texts) else None
        lines.append(BallotLine(position, name, against_all, votes, pct))
    return tuple(lines)


# Cell texts read before, and what the parser of record's number functions made of them:
# a page repeats the same few hundred counts and percentages the last pages had. Only
# readings are kept (a text they refuse raises every time), and at most _MEMO_SIZE each.
_MEMO_SIZE = 50_000
_T = TypeVar("_T")


def _remembered(read: Callable[[str], _T]) -> Callable[[str], _T]:
    memo: dict[str, _T] = {}

    def remembered(text: str) -> _T:
        try:
            return memo[text]
        except KeyError:
            value = read(text)
            if len(memo) < _MEMO_SIZE:
                memo[text] = value
            return value

    return remembered


_count = _remembered(parse_count)
_percent = _remembered(parse_percent)


def _protocol_rows(table: etree._Element) -> list[tuple[str, str, str]]:
    return protocol_rows_from_cells([_text(cell) for cell in _cells(row)] for row in _rows(table))


def _protocol(rows: Sequence[tuple[str, str, str]], url: str) -> ProtocolFigures:
    # The parser of record's reading; a fractional count is left to it (it records the cell).
    fractional: list[tuple[str, str]] = []
    protocol = _parse_protocol(rows, url, fractional)
    if fractional:
        raise NotSpecShaped("a fractional count in the protocol")
    return protocol


def _is_against_all_label(name: str) -> bool:
    lowered = name.lower()
    if "всех" not in lowered and "каршы" not in lowered and "against" not in lowered:
        return False
    norm = _norm(name)
    return any(label in norm for label in _AGAINST_ALL_LABELS)


def _child_links(table: etree._Element, url: str) -> list[Link]:
    anchors = [a for a in table.iter("a") if a.get("href")]
    if not anchors:
        return []  # a protocol or results table: no need to work out the page's place
    page = urlsplit(url)
    page_path = page.path if page.path.endswith("/") else page.path + "/"
    prefix = _contest_prefix(url)
    links: list[Link] = []
    for anchor in anchors:
        href = anchor.get("href")
        href = _resolve(url, href)
        if "://" in href:
            continue
        path = href.partition("?")[0].partition("#")[0]
        if not path.endswith("/"):
            path += "/"
        if not path.startswith(prefix) or path in (prefix, page_path):
            continue
        links.append(Link(segment=_path_segments(path)[-1], name=_text(anchor).strip(),
                          href=href))
    return links
