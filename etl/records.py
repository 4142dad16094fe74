"""Typed records that cross stage boundaries (parse -> crawl -> normalise).

Parsers return these; the crawler collects them; `etl.normalise` turns them into frames.
They are plain frozen dataclasses; a parsed division page crosses the crawl's process
pipe and the page cache as a `PageRecord` of plain values (cheaper to pickle and to turn
into columns than ~25 dataclass objects a page), and is staged as Arrow columns.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import NamedTuple


@dataclass(frozen=True)
class Link:
    """A link found on a page: the target's URL segment, its label and its href."""

    segment: str
    name: str
    href: str


@dataclass(frozen=True)
class ElectionListPage:
    """`/{lang}/results/`: the elections the portal lists."""

    elections: tuple[Link, ...]


@dataclass(frozen=True)
class ElectionPage:
    """`/{lang}/results/{election_id}/`: one election and its contests."""

    name: str
    date: str | None
    contests: tuple[Link, ...]


@dataclass(frozen=True)
class ProtocolFigures:
    """The counting-protocol table of a division page. None means missing, never zero."""

    registered: int | None = None
    ballots_issued: int | None = None
    ballots_cast: int | None = None
    invalid: int | None = None
    valid: int | None = None
    turnout_pct_published: float | None = None
    precincts_counted: int | None = None
    precincts_total: int | None = None


@dataclass(frozen=True)
class BallotLine:
    """One row of a results table, in the order the page lists it."""

    choice_position: int | None
    choice_name: str
    is_against_all: bool
    votes: int | None
    pct_published: float | None


@dataclass(frozen=True)
class DivisionPage:
    """A division page of a contest (root, intermediate or precinct)."""

    declared_id: str | None
    level: str | None
    name: str
    portal_updated_at: datetime | None
    protocol: ProtocolFigures
    has_results_table: bool
    lines: tuple[BallotLine, ...]
    children: tuple[Link, ...] = field(default_factory=tuple)
    # Count cells that hold a fraction, as (figure, cell text): an integer column cannot
    # carry them, so the figure is missing and the quality gate fails the division (C5).
    fractional_counts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FetchFailure:
    """A page that could not be fetched or parsed, with a reason a person can act on."""

    url: str
    reason: str
    status: int | None = None


# A ballot line, a child link and a fractional count cell as plain tuples, in the field
# order of BallotLine, Link and (figure, cell text); the protocol in ProtocolFigures' order.
# `etl.normalise` names the columns of each from these same tuples of field names.
PROTOCOL_FIELDS = tuple(f.name for f in fields(ProtocolFigures))
LINE_FIELDS = tuple(f.name for f in fields(BallotLine))
LINK_FIELDS = tuple(f.name for f in fields(Link))
_protocol_values = operator.attrgetter(*PROTOCOL_FIELDS)
_line_values = operator.attrgetter(*LINE_FIELDS)
_link_values = operator.attrgetter(*LINK_FIELDS)
LineValues = tuple[int | None, str, bool, int | None, float | None]
LinkValues = tuple[str, str, str]
CellValues = tuple[str, str]
ProtocolValues = tuple[int | None, int | None, int | None, int | None, int | None,
                       float | None, int | None, int | None]


class PageRecord(NamedTuple):
    """A parsed division page as plain values (`DivisionPage` field for field; the stamp
    as ISO 8601 text with its offset)."""

    declared_id: str | None
    level: str | None
    name: str
    portal_updated_at: str | None
    protocol: ProtocolValues
    has_results_table: bool
    lines: tuple[LineValues, ...]
    children: tuple[LinkValues, ...]
    fractional_counts: tuple[CellValues, ...]


def page_record(page: DivisionPage) -> PageRecord:
    """A parsed page's plain values."""
    stamp = page.portal_updated_at
    return PageRecord(
        page.declared_id, page.level, page.name,
        stamp.isoformat() if stamp is not None else None,
        _protocol_values(page.protocol),
        page.has_results_table,
        tuple(map(_line_values, page.lines)),
        tuple(map(_link_values, page.children)),
        tuple(page.fractional_counts),
    )


class SeenPage(NamedTuple):
    """What a snapshot records of a fetched page: the URL that answered, its body's digest
    in the raw archive, and whether it came from the archive after a 304."""

    url: str
    sha256: str
    not_modified: bool


class CrawledDivision(NamedTuple):
    """A parsed division page placed in its contest's hierarchy."""

    contest_id: str
    division_id: str
    parent_id: str | None
    url: str
    sha256: str
    page: PageRecord


@dataclass(frozen=True)
class PageRef:
    """Which archived body a snapshot used for a URL (to rebuild it from the archive)."""

    url: str
    sha256: str
    status: int
