"""Rendering of a snapshot to the portal's HTML pages and JSON API (SPEC A and B).

`PortalRenderer.render(index, path, query)` returns the page as bytes with its ETag and
Last-Modified, or None for an unknown path. Rendering is pure: same scenario, same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from html import escape
from urllib.parse import parse_qs

from etl.replica.scenario import (
    MODE_MAINTENANCE,
    MODE_RESULTS,
    MODE_UNAVAILABLE,
    Contest,
    Division,
    Scenario,
    Snapshot,
    Tally,
)

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
LANGS = ("ru", "kg")
NO_DATA = "—"

LABELS: dict[str, dict[str, str]] = {
    "ru": {
        "registered": "Число избирателей, внесенных в список избирателей",
        "issued": "Число избирателей, получивших бюллетени",
        "cast": "Число избирателей, принявших участие в голосовании",
        "invalid": "Число недействительных бюллетеней",
        "valid": "Число действительных бюллетеней",
        "turnout": "Явка избирателей",
        "processed": "Обработано протоколов УИК",
        "number": "№",
        "name": "Наименование",
        "votes": "Число голосов",
        "commission": "Комиссия",
        "processed_short": "Обработано",
        "against_all": "Против всех",
        "of": "из",
        "results": "Результаты выборов",
        "contests": "Избирательные округа",
        "maintenance": "Ведутся технические работы. Данные временно недоступны.",
        "maintenance_title": "Технические работы",
        "unavailable": "Сервис временно недоступен. Повторите запрос позже.",
    },
    "kg": {
        "registered": "Шайлоочулардын тизмесине киргизилген шайлоочулардын саны",
        "issued": "Шайлоо бюллетендерин алган шайлоочулардын саны",
        "cast": "Добуш берүүгө катышкан шайлоочулардын саны",
        "invalid": "Жараксыз деп табылган бюллетендердин саны",
        "valid": "Жарактуу бюллетендердин саны",
        "turnout": "Шайлоочулардын катышуусу",
        "processed": "Иштелип чыккан УШК протоколдору",
        "number": "№",
        "name": "Аталышы",
        "votes": "Добуштардын саны",
        "commission": "Комиссия",
        "processed_short": "Иштелип чыкты",
        "against_all": "Баарына каршы",
        "of": "из",
        "results": "Шайлоонун жыйынтыктары",
        "contests": "Шайлоо округдары",
        "maintenance": "Техникалык иштер жүрүүдө. Маалыматтар убактылуу жеткиликсиз.",
        "maintenance_title": "Техникалык иштер",
        "unavailable": "Кызмат убактылуу жеткиликсиз. Кийинчерээк кайталаңыз.",
    },
}
# ru pages group thousands with a plain space (as in the SPEC), kg pages with a no-break
# space: both occur in the wild and the parser must accept either.
THOUSANDS = {"ru": " ", "kg": "\u00a0"}


@dataclass(frozen=True)
class Page:
    """A rendered response: status, body and the validators the server sends."""

    status: int
    body: bytes
    content_type: str
    etag: str  # quoted strong validator, e.g. "\"3f2a…\""
    last_modified: str  # HTTP date of the snapshot's portal time
    retry_after: int | None = None


def http_date(snapshot: Snapshot) -> str:
    """The snapshot's portal time as an HTTP date (GMT)."""
    return format_datetime(snapshot.portal_time.astimezone(UTC), usegmt=True)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha1(body).hexdigest() + '"'


def _updated_element(when: datetime) -> str:
    """The page's `updated` time element (SPEC.md section A)."""
    return (f'<time class="updated" datetime="{when.isoformat()}">'
            f"{when.strftime('%d.%m.%Y %H:%M:%S')}</time>")


_UPDATED = re.compile(rb'<time class="updated" datetime="([^"<>]+)">[^<]*</time>')


def _number(value: int, lang: str) -> str:
    return f"{value:,}".replace(",", THOUSANDS[lang])


def _percent(value: float) -> str:
    return f"{value:.2f}".replace(".", ",") + "%"


class PortalRenderer:
    """Renders pages of one scenario; holds no per-request state, so it is thread-safe."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        # ballot lines' names, HTML-escaped once per contest rather than once per page
        self._escaped = {
            contest_id: tuple(escape(choice.name) for choice in contest.choices)
            for contest_id, contest in scenario.contests.items()
        }
        # What makes this scenario's pages what they are, in its pages' validators: two
        # replicas of other seeds or sizes never share an ETag for the same path.
        self._identity = (f"{scenario.scenario_id}|{scenario.seed}|{len(scenario.precinct_ids)}|"
                          f"{scenario.election_id}")

    def render(self, index: int, path: str, query: str = "", *,
               restamp: timedelta = timedelta(0)) -> Page | None:
        """The page at `path` (+ `query`) in snapshot `index`, or None if there is none.

        `restamp` moves the page's `updated` time (and Last-Modified) by that much and
        changes nothing else, as the portal does when it re-publishes unchanged pages.
        """
        snapshot = self.scenario.snapshots[index]
        if restamp:
            snapshot = dataclasses.replace(snapshot, portal_time=snapshot.portal_time + restamp)
        if snapshot.mode == MODE_UNAVAILABLE:
            return self._unavailable(snapshot, path)
        if snapshot.mode == MODE_MAINTENANCE:
            return self._maintenance(snapshot, path)
        if path.startswith("/api/"):
            return self._api(snapshot, path, query)
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] not in LANGS or parts[1] != "results" or not path.endswith("/"):
            return None
        lang, rest = parts[0], parts[2:]
        if not rest:
            return self._page(snapshot, self._election_list(snapshot, lang))
        if rest[0] != self.scenario.election_id:
            return None
        if len(rest) == 1:
            return self._page(snapshot, self._election(snapshot, lang))
        found = self._division_at(path)
        if found is None:
            return None
        contest, division_id = found
        page = self._page(snapshot, self._division(snapshot, lang, contest, division_id))
        tag = self._validator(index, path, contest, division_id, restamp)
        return page if tag is None else dataclasses.replace(page, etag=tag)

    def _division_at(self, path: str) -> tuple[Contest, str] | None:
        """The contest and division a division page's path names, or None."""
        parts = [p for p in path.split("/") if p]
        if (len(parts) not in (4, 5) or parts[0] not in LANGS or parts[1] != "results"
                or parts[2] != self.scenario.election_id or not path.endswith("/")):
            return None
        contest = self.scenario.contests.get(parts[3])
        if contest is None:
            return None
        division_id = parts[4] if len(parts) == 5 else contest.root_id
        return (contest, division_id) if division_id in contest.divisions else None

    def validator(self, index: int, path: str, *, restamp: timedelta = timedelta(0)) -> str | None:
        """The ETag of the division page at `path` in snapshot `index`, known without
        rendering it, in a scenario whose pages show their own last change (`synthetic`);
        None for any other page or scenario (their ETag is their body's digest).

        It names the run of snapshots over which the page stays byte for byte the same
        (`Scenario.same_page_since`), so the replica answers a conditional request for
        an unchanged page without rendering it: at 100,000 precincts, rendering each page
        again to find it unchanged cost the replica ~0.2 ms a request, on the cores the
        pipeline it serves runs on.
        """
        if not self.scenario.page_times_follow_changes:
            return None
        found = self._division_at(path)
        return None if found is None else self._validator(index, path, *found, restamp)

    def _validator(self, index: int, path: str, contest: Contest, division_id: str,
                   restamp: timedelta) -> str | None:
        sc = self.scenario
        if sc.snapshots[index].mode != MODE_RESULTS:
            return None
        since = sc.same_page_since(index, contest.contest_id, division_id)
        if since is None:
            return None
        identity = f"{self._identity}|{path}|{since}|{restamp.total_seconds()!r}"
        return '"' + hashlib.sha1(identity.encode()).hexdigest() + '"'

    def restamped(self, index: int, page: Page, restamp: timedelta, path: str) -> Page | None:
        """`page` (at `path`) of snapshot `index` as `render(..., restamp=restamp)` gives it,
        made by moving its one `updated` element and its Last-Modified instead of rendering
        it again (~20x cheaper: the replica shares the cores with the pipeline it serves);
        None when the page is not a plain results page with exactly one such element."""
        snapshot = self.scenario.snapshots[index]
        if (not restamp or page.status != 200 or page.content_type != HTML
                or snapshot.mode in (MODE_UNAVAILABLE, MODE_MAINTENANCE)):
            return None
        found = _UPDATED.findall(page.body)
        if len(found) != 1:
            return None
        element = _updated_element(datetime.fromisoformat(found[0].decode()) + restamp).encode()
        body = _UPDATED.sub(lambda _: element, page.body, count=1)
        moved = dataclasses.replace(snapshot, portal_time=snapshot.portal_time + restamp)
        etag = self.validator(index, path, restamp=restamp) or _etag(body)
        return dataclasses.replace(page, body=body, etag=etag, last_modified=http_date(moved))

    # -- envelopes ------------------------------------------------------------------

    def _page(
        self, snapshot: Snapshot, text: str, content_type: str = HTML, status: int = 200
    ) -> Page:
        body = text.encode("utf-8")
        return Page(
            status=status,
            body=body,
            content_type=content_type,
            etag=_etag(body),
            last_modified=http_date(snapshot),
            retry_after=snapshot.retry_after if status == 503 else None,
        )

    def _head(self, lang: str, title: str) -> list[str]:
        return [
            "<!doctype html>\n",
            f'<html lang="{lang}"><head><meta charset="utf-8">\n',
            f"<title>{escape(title)}</title></head>\n<body>\n",
        ]

    def _updated(self, snapshot: Snapshot, when: datetime | None = None) -> str:
        return _updated_element(when or snapshot.portal_time) + "\n"

    def _lang_of(self, path: str) -> str:
        return "kg" if path.startswith("/kg/") else "ru"

    def _maintenance(self, snapshot: Snapshot, path: str) -> Page:
        lang = self._lang_of(path)
        labels = LABELS[lang]
        out = self._head(lang, labels["maintenance_title"])
        out.append(f'<div class="notice maintenance"><p>{labels["maintenance"]}</p></div>\n')
        out.append("</body></html>\n")
        return self._page(snapshot, "".join(out))

    def _unavailable(self, snapshot: Snapshot, path: str) -> Page:
        lang = self._lang_of(path)
        labels = LABELS[lang]
        out = self._head(lang, "503 Service Unavailable")
        out.append(f"<p>{labels['unavailable']}</p>\n</body></html>\n")
        return self._page(snapshot, "".join(out), status=503)

    # -- HTML pages -----------------------------------------------------------------

    def _election_list(self, snapshot: Snapshot, lang: str) -> str:
        sc = self.scenario
        labels = LABELS[lang]
        name = sc.election_name_ru if lang == "ru" else sc.election_name_kg
        out = self._head(lang, labels["results"])
        out.append(f"<h1>{labels['results']}</h1>\n<ul class=\"elections\">\n")
        out.append(
            f'  <li><a class="election" href="/{lang}/results/{sc.election_id}/">'
            f"{escape(name)}</a></li>\n"
        )
        out.append("</ul>\n</body></html>\n")
        return "".join(out)

    def _election(self, snapshot: Snapshot, lang: str) -> str:
        sc = self.scenario
        labels = LABELS[lang]
        name = sc.election_name_ru if lang == "ru" else sc.election_name_kg
        year, month, day = sc.election_date.split("-")
        out = self._head(lang, name)
        out.append(f'<h1 class="election">{escape(name)}</h1>\n')
        out.append(
            f'<time class="election-date" datetime="{sc.election_date}">'
            f"{day}.{month}.{year}</time>\n"
        )
        out.append(self._updated(snapshot))
        out.append(f"<h2>{labels['contests']}</h2>\n<ul class=\"contests\">\n")
        for contest in sc.contests.values():
            contest_name = contest.name_ru if lang == "ru" else contest.name_kg
            out.append(
                f'  <li><a class="contest" data-contest="{contest.contest_id}" '
                f'href="/{lang}/results/{sc.election_id}/{contest.contest_id}/">'
                f"{escape(contest_name)}</a></li>\n"
            )
        out.append("</ul>\n</body></html>\n")
        return "".join(out)

    def division_page_path(self, lang: str, contest: Contest, division_id: str) -> str:
        """The path of a division's page: the contest's own for its root division."""
        base = f"/{lang}/results/{self.scenario.election_id}/{contest.contest_id}/"
        return base if division_id == contest.root_id else f"{base}{division_id}/"

    def _division(
        self, snapshot: Snapshot, lang: str, contest: Contest, division_id: str
    ) -> str:
        sc = self.scenario
        labels = LABELS[lang]
        base = f"/{lang}/results/{sc.election_id}/{contest.contest_id}/"
        division = contest.divisions[division_id]
        tally = sc.tally(snapshot.index, contest.contest_id, division_id)
        name = _name(division, lang)
        election_name = sc.election_name_ru if lang == "ru" else sc.election_name_kg
        out = self._head(lang, f"{name} — {election_name}")

        out.append('<nav class="breadcrumb">\n')
        for ancestor in contest.division_path(division_id)[:-1]:
            href = self.division_page_path(lang, contest, ancestor.division_id)
            out.append(f'  <a href="{href}">{escape(_name(ancestor, lang))}</a> /\n')
        out.append(f"  <span>{escape(name)}</span>\n</nav>\n")
        out.append(
            f'<h1 data-division-id="{division.division_id}" data-level="{division.level}">'
            f"{escape(name)}</h1>\n"
        )
        # A re-stamped snapshot (see `render`) moves every page's own time by as much.
        restamped_by = snapshot.portal_time - sc.snapshots[snapshot.index].portal_time
        out.append(self._updated(
            snapshot, sc.page_time(snapshot.index, contest.contest_id, division_id) + restamped_by
        ))
        out.extend(self._protocol(tally, lang))
        out.extend(self._results(snapshot, contest, division, tally, lang))
        if division.children:
            out.append('\n<table class="subdivisions">\n')
            out.append(
                f"  <thead><tr><th>{labels['commission']}</th>"
                f"<th>{labels['processed_short']}</th></tr></thead>\n  <tbody>\n"
            )
            for child_id in division.children:
                child = contest.divisions[child_id]
                counted = sc.tally(snapshot.index, contest.contest_id, child_id).precincts_counted
                out.append(
                    f'    <tr><td><a href="{base}{child_id}/">{escape(_name(child, lang))}</a>'
                    f"</td><td>{counted} {labels['of']} {child.stop - child.start}</td></tr>\n"
                )
            out.append("  </tbody>\n</table>\n")
        out.append("</body></html>\n")
        return "".join(out)

    def _protocol(self, tally: Tally, lang: str) -> list[str]:
        labels = LABELS[lang]
        counted = tally.precincts_counted > 0

        def cell(value: int) -> str:
            return _number(value, lang) if counted else NO_DATA

        rows = (
            ("registered", _number(tally.registered, lang)),
            ("issued", cell(tally.ballots_issued)),
            ("cast", cell(tally.ballots_cast)),
            ("invalid", cell(tally.invalid)),
            ("valid", cell(tally.valid)),
            ("turnout", _percent(tally.turnout_pct) if counted else NO_DATA),
            ("processed", f"{tally.precincts_counted} {labels['of']} {tally.precincts_total}"),
        )
        out = ['\n<table class="protocol">\n']
        out.extend(f"  <tr><th>{labels[key]}</th><td>{value}</td></tr>\n" for key, value in rows)
        out.append("</table>\n")
        return out

    def _results(
        self,
        snapshot: Snapshot,
        contest: Contest,
        division: Division,
        tally: Tally,
        lang: str,
    ) -> list[str]:
        labels = LABELS[lang]
        out = [
            '\n<table class="results">\n',
            f"  <thead><tr><th>{labels['number']}</th><th>{labels['name']}</th>"
            f"<th>{labels['votes']}</th><th>%</th></tr></thead>\n  <tbody>\n",
        ]
        if tally.precincts_counted:
            doubled = snapshot.doubled_positions if contest.contest_id == "list" else frozenset()
            shown = list(tally.votes)
            misprint = snapshot.misprint
            if (
                misprint is not None
                and misprint.contest_id == contest.contest_id
                and misprint.division_id == division.division_id
            ):
                # a figure typed wrong; the portal computes the % from what was typed
                shown[misprint.position - 1] = misprint.votes_shown
            rows = [
                f"    <tr><td>{choice.position}</td><td>{name}</td>"
                f"<td>{_number(votes, lang)}</td>"
                f"<td>{_percent(_published_pct(tally, votes, choice.position in doubled))}</td>"
                "</tr>\n"
                for choice, name, votes in zip(
                    contest.choices, self._escaped[contest.contest_id], shown, strict=True
                )
            ]
            duplicate = snapshot.duplicate
            if (
                duplicate is not None
                and duplicate.contest_id == contest.contest_id
                and duplicate.division_id == division.division_id
            ):
                # the same line reported again further down the table (SPEC incident 5)
                repeated = rows[duplicate.position - 1]
                where = len(rows) if duplicate.position < len(rows) else 0
                rows.insert(where, repeated)
            out.extend(rows)
            out.append(
                f'    <tr class="against-all"><td>{NO_DATA}</td><td>{labels["against_all"]}</td>'
                f"<td>{_number(tally.against_all, lang)}</td>"
                f"<td>{_percent(tally.pct(tally.against_all))}</td></tr>\n"
            )
        out.append("  </tbody>\n</table>\n")
        return out

    # -- JSON API -------------------------------------------------------------------

    def _api(self, snapshot: Snapshot, path: str, query: str) -> Page | None:
        sc = self.scenario
        parts = [p for p in path.split("/") if p]
        if parts != ["api", "election", sc.election_id, "ballot-count"]:
            return None
        params = parse_qs(query)
        contest = sc.contests.get(params.get("type", ["list"])[0])
        if contest is None:
            return None
        division_id = params.get("id", [contest.root_id])[0]
        if division_id not in contest.divisions:
            return None
        division = contest.divisions[division_id]
        doubled = snapshot.doubled_positions if contest.contest_id == "list" else frozenset()
        ballots = [
            {"position": c.position, "name_ky": c.name, "name_ru": c.name}
            for c in contest.choices
        ]
        ballots.append(
            {
                "position": 0,
                "name_ky": LABELS["kg"]["against_all"],
                "name_ru": LABELS["ru"]["against_all"],
                "against_all": True,
            }
        )
        entries = [
            self._api_entry(snapshot, contest, d, doubled)
            for d in (division_id, *division.children)
        ]
        tally = sc.tally(snapshot.index, contest.contest_id, division_id)
        counted = tally.precincts_counted > 0
        overview = {
            "p3": tally.registered,
            "p5": tally.ballots_cast if counted else None,
            "p7": tally.invalid if counted else None,
            "p8": tally.valid if counted else None,
        }
        document = {
            "updated": snapshot.portal_time.isoformat(),
            "processed": {"counted": tally.precincts_counted, "total": tally.precincts_total},
            "ballots": ballots,
            "ballotCounts": entries,
            "overview": {"pcos": overview},
        }
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        return self._page(snapshot, text, JSON)

    def _api_entry(
        self, snapshot: Snapshot, contest: Contest, division_id: str, doubled: frozenset[int]
    ) -> dict[str, object]:
        division = contest.divisions[division_id]
        tally = self.scenario.tally(snapshot.index, contest.contest_id, division_id)
        counted = tally.precincts_counted > 0
        counts: list[dict[str, object]] = [
            {
                "position": c.position,
                "pcosCount": votes if counted else None,
                "pcosPercent": (
                    f"{_published_pct(tally, votes, c.position in doubled):.2f}%"
                    if counted
                    else None
                ),
            }
            for c, votes in zip(contest.choices, tally.votes, strict=True)
        ]
        counts.append(
            {
                "position": 0,
                "pcosCount": tally.against_all if counted else None,
                "pcosPercent": f"{tally.pct(tally.against_all):.2f}%" if counted else None,
            }
        )
        return {
            "division": {
                "id": division.division_id,
                "name_ru": division.name_ru,
                "name_ky": division.name_kg,
                "level": division.level,
                "parent_id": division.parent_id,
            },
            "processed": {"counted": tally.precincts_counted, "total": tally.precincts_total},
            "ballotCounts": counts,
        }


def _name(division: Division, lang: str) -> str:
    return division.name_ru if lang == "ru" else division.name_kg


def _published_pct(tally: Tally, votes: int, doubled: bool) -> float:
    """The percentage the page shows; doubled during the display-formula incident."""
    pct = tally.pct(votes)
    return round(pct * 2, 2) if doubled else pct
