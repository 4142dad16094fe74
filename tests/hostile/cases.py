"""The hostile corpus: what a hostile or broken portal does, and what the pipeline must do.

Every case mutates the replica's final snapshot of contest `okrug-1` (a root and 28
precincts) and runs one `python -m etl run` against it. Expected exit codes (README):
0 published, 3 a contest quarantined, 1 an error (nothing published). A page the
pipeline cannot read is a page failure: the contest is published with a coverage
warning (W3) naming it; an impossible number is data, and quarantines the contest.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import resource
import signal
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path

from etl.archive import RawArchive
from etl.replica import load_scenario
from etl.replica.render import PortalRenderer
from tests.hostile.runner import (
    CONTEST,
    Case,
    Outcome,
    case_env,
    run_subprocess,
)
from tests.hostile.server import HostileServer, Mutation, Response, closed_port

ELECTION_PATH = "/ru/results/jk2021/"
ROOT = f"/ru/results/jk2021/{CONTEST}/"
PRECINCT = f"{ROOT}1001/"
# The first ballot line of a precinct page: №1, its name, its votes.
FIRST_VOTES = re.compile(r"(<tbody>\s*<tr><td>1</td><td>[^<]*</td><td>)([^<]*)(</td>)")


# --------------------------------------------------------------------------- mutations


def on(path: str | Callable[[str], bool], change: Mutation) -> Mutation:
    """Apply `change` only to `path` (exact path, or a predicate on the path)."""
    matches = path if callable(path) else (lambda p: p == path)

    def mutate(target: str, response: Response) -> Response:
        return change(target, response) if matches(target) else response

    return mutate


def in_contest(target: str) -> bool:
    """Every page of the contest (root and precincts)."""
    return target.startswith(ROOT)


def text(change: Callable[[str], str], encoding: str = "utf-8") -> Mutation:
    """Rewrite the body as text (UTF-8 in, `encoding` out)."""

    def mutate(_: str, response: Response) -> Response:
        body = change(response.body.decode("utf-8"))
        return response.with_body(body.encode(encoding, errors="xmlcharrefreplace"))

    return mutate


def sub(old: str, new: str, count: int = 0) -> Mutation:
    """Replace text in the body (every occurrence unless `count`)."""
    def change(body: str) -> str:
        assert old in body, f"mutation target {old!r} not on the page"
        return body.replace(old, new, count or -1)

    return text(change)


def first_votes(value: str) -> Mutation:
    """Set the vote cell of ballot line №1."""
    def change(body: str) -> str:
        assert FIRST_VOTES.search(body), "no first ballot line"
        return FIRST_VOTES.sub(lambda m: m[1] + value + m[3], body, count=1)

    return text(change)


def status(code: int, *, times: int | None = None, retry_after: str | None = None) -> Mutation:
    """Answer `code` (the first `times` requests of the path, or all)."""
    seen: dict[str, int] = {}

    def mutate(target: str, response: Response) -> Response:
        seen[target] = seen.get(target, 0) + 1
        if times is not None and seen[target] > times:
            return response
        headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/plain; charset=utf-8"),)
        if retry_after is not None:
            headers += (("Retry-After", retry_after),)
        return Response(code, f"{code} (hostile)\n".encode(), headers)

    return mutate


def first_times(times: int, change: Mutation) -> Mutation:
    """Apply `change` to the first `times` requests of each path only."""
    seen: dict[str, int] = {}

    def mutate(target: str, response: Response) -> Response:
        seen[target] = seen.get(target, 0) + 1
        return change(target, response) if seen[target] <= times else response

    return mutate


def headers(**values: str) -> Mutation:
    """Set response headers (underscores in names become dashes)."""
    def mutate(_: str, response: Response) -> Response:
        for name, value in values.items():
            response = response.with_header(name.replace("_", "-"), value)
        return response

    return mutate


def chain(*mutations: Mutation) -> Mutation:
    """Apply mutations in order."""
    def mutate(target: str, response: Response) -> Response:
        for mutation in mutations:
            response = mutation(target, response)
        return response

    return mutate


def cp1251(content_type: str, *, meta: str | None) -> Mutation:
    """Serve the page in windows-1251 (Kyrgyz letters as entities), with this declaration."""
    def change(body: str) -> str:
        return body.replace('<meta charset="utf-8">', f'<meta charset="{meta}">' if meta else "")

    return chain(text(change, "windows-1251"), headers(Content_Type=content_type))


def redirect(location: Callable[[str], str], code: int = 302) -> Mutation:
    """Answer with a redirect to `location(path)`."""
    def mutate(target: str, response: Response) -> Response:
        return Response(code, b"", (("Location", location(target)),))

    return mutate


# --------------------------------------------------------------------------- checks


def division_name(outcome: Outcome, division_id: str) -> str | None:
    rows = outcome.query("select name from divisions where contest_id = ? and division_id = ?",
                         CONTEST, division_id)
    return rows[0][0] if rows else None


def root_votes(outcome: Outcome, position: int) -> int | None:
    rows = outcome.query(
        "select r.votes from results r join divisions d using (snapshot_id, contest_id, division_id)"
        " where r.contest_id = ? and d.parent_id is null and r.choice_position = ?",
        CONTEST, position)
    return rows[0][0] if rows else None


def no_failures(outcome: Outcome) -> bool:
    return outcome.snapshot_meta().get("pages_failed") == 0


def failure_of(path: str, *words: str) -> Callable[[Outcome], bool]:
    def check(outcome: Outcome) -> bool:
        failures = outcome.snapshot_meta().get("failures", [])
        return any(f["url"] == outcome.url(path) and all(w in f["reason"] for w in words)
                   for f in failures)

    return check


def coverage_warned(outcome: Outcome) -> bool:
    return "W3" in outcome.failed_checks()


def all_divisions(outcome: Outcome) -> bool:
    return len(outcome.query("select 1 from divisions where contest_id = ?", CONTEST)) == 29


def encoding_recorded(path: str, encoding: str, source: str) -> Callable[[Outcome], bool]:
    def check(outcome: Outcome) -> bool:
        entries = [e for e in outcome.index_entries() if e["url"] == outcome.url(path)]
        return bool(entries) and all(e.get("encoding") == encoding
                                     and e.get("encoding_source") == source for e in entries)

    return check


BASELINE_VOTES_2 = 8881  # okrug-1, candidate №2, final snapshot (the replica's figures)
NAME_1001 = "УИК №1001"

figures_intact: tuple[str, Callable[[Outcome], bool]] = (
    "root figures as the portal shows them (candidate №2: 8,881 votes)",
    lambda o: root_votes(o, 2) == BASELINE_VOTES_2)
published_whole: tuple[tuple[str, Callable[[Outcome], bool]], ...] = (
    ("no page failed", no_failures),
    ("all 29 divisions loaded", all_divisions),
    figures_intact,
)


def verbatim_name(name: str) -> tuple[str, Callable[[Outcome], bool]]:
    return (f"division 1001 stored verbatim as {name[:40]!r}…",
            lambda o: division_name(o, "1001") == name)


def quarantined_by(*check_ids: str) -> tuple[str, Callable[[Outcome], bool]]:
    return (f"critical {'/'.join(check_ids)} failed for {CONTEST}",
            lambda o: set(check_ids) <= o.failed_checks())


# --------------------------------------------------------------------------- special runs


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        # Ignored, SIGXFSZ no longer kills the process: the write fails with EFBIG instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def run_disk_full(case: Case, workdir: Path) -> tuple[Outcome, list[str]]:
    """A file-size limit the archive's index outgrows, then a run with space again."""
    data_dir = workdir / "data"
    problems: list[str] = []
    with HostileServer() as portal:
        full = run_subprocess(portal.base_url, case_env(case, data_dir), data_dir,
                              _limit_file_size(8_000))
        if "raw archive" not in full.stderr:
            problems.append(f"no clear archive error on stderr: {full.stderr[-300:]!r}")
        if full.exit_code != 1:
            problems.append(f"full disk: exit {full.exit_code}, expected 1")
        if full.published:
            problems.append("full disk: something was published")
        raw = data_dir / "raw"
        try:
            entries = full.index_entries()  # every line whole JSON
        except ValueError as exc:
            problems.append(f"a half-written index line: {exc}")
            entries = []
        archive = RawArchive(raw)
        for entry in entries:
            try:
                whole = hashlib.sha256(archive.read(entry["sha256"])).hexdigest() == entry["sha256"]
            except FileNotFoundError:
                whole = False
            if not whole:
                problems.append(f"index names a missing or partial body {entry['sha256'][:12]}")
        again = run_subprocess(portal.base_url, case_env(case, data_dir), data_dir)
    if again.exit_code != 0:
        problems.append(f"the next run with space: exit {again.exit_code}: {again.stderr[-300:]!r}")
    again.hits = list(portal.hits.paths)
    return again, problems


def run_portal_down(case: Case, workdir: Path) -> tuple[Outcome, list[str]]:
    from tests.hostile.runner import run_in_process

    data_dir = workdir / "data"
    return run_in_process(f"http://127.0.0.1:{closed_port()}", case_env(case, data_dir),
                          data_dir), []


def run_redirect_off_host(case: Case, workdir: Path) -> tuple[Outcome, list[str]]:
    """A precinct redirects to another (live) host: it must never be contacted."""
    from tests.hostile.runner import run_in_process

    data_dir = workdir / "data"
    with HostileServer() as elsewhere:
        mutate = on(PRECINCT, redirect(lambda p: f"{elsewhere.base_url}{p}"))
        with HostileServer(mutate) as portal:
            outcome = run_in_process(portal.base_url, case_env(case, data_dir), data_dir)
            outcome.hits = list(portal.hits.paths)
        problems = [f"the other host was asked for {elsewhere.hits.paths}"] if elsewhere.hits.paths else []
    return outcome, problems


def run_offhost_link(case: Case, workdir: Path) -> tuple[Outcome, list[str]]:
    """The root lists a child on another (live) host: it must never be contacted."""
    from tests.hostile.runner import run_in_process

    data_dir = workdir / "data"
    with HostileServer() as elsewhere:
        row = (f'<tr><td><a href="{elsewhere.base_url}{ROOT}9999/">УИК №9999</a></td>'
               "<td>1 из 1</td></tr>\n  </tbody>\n</table>\n</body>")
        mutate = on(ROOT, text(lambda b: b.replace("</tbody>\n</table>\n</body>", row)))
        with HostileServer(mutate) as portal:
            outcome = run_in_process(portal.base_url, case_env(case, data_dir), data_dir)
            outcome.hits = list(portal.hits.paths)
        problems = [f"the other host was asked for {elsewhere.hits.paths}"] if elsewhere.hits.paths else []
    return outcome, problems


# --------------------------------------------------------------------------- the corpus

_EXTRA_LEVEL_LINK = re.compile(r'<table class="subdivisions">.*?</table>', re.S)


def extra_level(target: str, response: Response) -> Response:
    """The root links to one intermediate division `x1`, which links to the precincts."""
    if target == ROOT:
        body = response.body.decode()
        link = ('<table class="subdivisions"><thead><tr><th>Комиссия</th><th>Обработано</th>'
                f'</tr></thead><tbody><tr><td><a href="{ROOT}x1/">ОИК Ленинский</a></td>'
                "<td>28 из 28</td></tr></tbody></table>")
        return response.with_body(_EXTRA_LEVEL_LINK.sub(link, body).encode())
    return response


@cache
def _root_page() -> bytes:
    scenario = load_scenario("kg2021")
    page = PortalRenderer(scenario).render(scenario.resolve("final"), ROOT)
    assert page is not None
    return page.body


def serve_extra_level(target: str, response: Response) -> Response:
    """Serve `x1`: the root's figures (it holds every precinct) under its own id."""
    if target != f"{ROOT}x1/":
        return response
    body = _root_page().decode().replace('data-division-id="0" data-level="constituency"',
                                         'data-division-id="x1" data-level="district"')
    return Response(200, body.encode(), (("Content-Type", "text/html; charset=utf-8"),))


def _swap_votes_and_pct(body: str) -> str:
    body = body.replace("<th>Число голосов</th><th>%</th>", "<th>%</th><th>Число голосов</th>")
    return re.sub(r"<td>([^<]*)</td><td>([^<]*%)</td></tr>", r"<td>\2</td><td>\1</td></tr>", body)


def _pad(size: int) -> Mutation:
    return text(lambda b: b.replace("</body>", "<!--" + "x" * size + "--></body>"))


def _gzip(_: str, response: Response) -> Response:
    return replace(response, body=gzip.compress(response.body),
                   headers=(*response.headers, ("Content-Encoding", "gzip")))


def _query_variants(body: str) -> str:
    """Precinct 1001 links every other precinct again, with a query string."""
    siblings = [d for d in load_scenario("kg2021").contests[CONTEST].divisions
                if d not in ("0", "1001")]
    rows = "".join(f'<tr><td><a href="{ROOT}{d}/?sort=votes">УИК №{d}</a></td></tr>'
                   for d in siblings)
    return body.replace("</body>", f'<table class="subdivisions"><tbody>{rows}</tbody></table>'
                                   "</body>")


def _reject_sort_queries(outcome: Outcome) -> bool:
    return not any("?sort=" in hit for hit in outcome.hits)


CASES: tuple[Case, ...] = (
    # ---- HTTP
    Case("http-baseline", "http", "the replica's pages as they are", 0, True,
         checks=published_whole),
    Case("http-503-once", "http", "a precinct answers 503 once", 0, True,
         on(PRECINCT, status(503, times=1)), published_whole),
    Case("http-429-retry-after", "http", "a precinct answers 429 Retry-After: 1 once", 0, True,
         on(PRECINCT, status(429, times=1, retry_after="1")), published_whole),
    Case("http-500-always", "http", "a precinct always answers 500", 0, True,
         on(PRECINCT, status(500)),
         (("failure names the page and HTTP 500", failure_of(PRECINCT, "HTTP 500")),
          ("coverage warning W3", coverage_warned))),
    Case("http-404", "http", "a linked precinct is 404", 0, True,
         on(PRECINCT, status(404)),
         (("failure names the page and HTTP 404", failure_of(PRECINCT, "HTTP 404")),
          ("coverage warning W3", coverage_warned))),
    Case("http-hang-once", "http", "a precinct holds its answer 5 s once (timeout 2 s)", 0, True,
         on(PRECINCT, first_times(1, lambda _, r: replace(r, hang=5.0))), published_whole),
    Case("http-truncated-once", "http", "a precinct's body is cut in half once", 0, True,
         on(PRECINCT, first_times(1, lambda _, r: replace(r, truncate=True))), published_whole),
    Case("http-trickle-page", "http",
         "a precinct sends its body one byte per 0.5 s (request deadline 4 s)", 0, True,
         on(PRECINCT, lambda _, r: replace(r, trickle=0.5)),
         (("failure names the deadline", failure_of(PRECINCT, "deadline")),
          ("coverage warning W3", coverage_warned))),
    Case("http-trickle-everything", "http", "every page trickles (the election page too)", 1,
         False, lambda _, r: replace(r, trickle=0.5),
         (("stderr says the portal is unavailable", lambda o: "unavailable" in o.stderr),)),
    Case("http-crawl-deadline", "http",
         "every precinct trickles, crawl deadline 5 s, request deadline 30 s", 1, False,
         on(lambda p: p.startswith(ROOT) and p != ROOT, lambda _, r: replace(r, trickle=0.3)),
         (("stderr names the deadline and the coverage",
           lambda o: "deadline" in o.stderr and "coverage" in o.stderr),
          ("ended near the deadline, not after the trickle", lambda o: o.seconds < 60)),
         env={"CEC_CRAWL_DEADLINE": "5", "CEC_REQUEST_DEADLINE": "30"}),
    Case("http-cycle-deadline", "http",
         "every precinct holds 1 s, cycle deadline 4 s", 1, False,
         on(lambda p: p.startswith(ROOT) and p != ROOT, lambda _, r: replace(r, hang=1.0)),
         (("stderr names the deadline", lambda o: "deadline" in o.stderr),),
         env={"CEC_CYCLE_DEADLINE": "4", "CEC_CONCURRENCY": "1"}),
    Case("http-redirect-off-host", "http", "a precinct redirects to another live host", 0, True,
         checks=(("failure says refused, another host", failure_of(PRECINCT, "refused", "another host")),
                 ("summary lists the refusal", lambda o: "page refused" in o.stdout),
                 ("snapshot.json limits list it", lambda o: any(
                     r["url"] == o.url(PRECINCT)
                     for r in o.snapshot_meta()["limits"]["refused_pages"]))),
         run=run_redirect_off_host),
    Case("http-redirect-same-host", "http", "a precinct redirects to itself with a query", 0, True,
         on(PRECINCT, redirect(lambda p: p + "?moved=1", 301)),
         (*published_whole,
          ("archived under the URL that answered", lambda o: any(
              e["url"] == o.url(PRECINCT + "?moved=1") and e["status"] == 200
              for e in o.index_entries())))),
    Case("http-oversize", "http", "a precinct's body is 300 KB (cap 100 KB)", 0, True,
         on(PRECINCT, _pad(300_000)),
         (("failure says refused, cap", failure_of(PRECINCT, "refused", "cap")),
          ("summary lists the refusal", lambda o: "page refused" in o.stdout)),
         env={"CEC_MAX_PAGE_BYTES": "100000"}),
    Case("http-oversize-no-length", "http",
         "a 300 KB precinct body without Content-Length (cap 100 KB)", 0, True,
         on(PRECINCT, chain(_pad(300_000), lambda _, r: replace(r, content_length=False))),
         (("failure says refused, cap", failure_of(PRECINCT, "refused", "cap")),),
         env={"CEC_MAX_PAGE_BYTES": "100000"}),
    Case("http-gzip", "http", "every page gzip-encoded", 0, True, _gzip, published_whole),
    Case("http-octet-stream", "http", "pages as application/octet-stream, no charset", 0, True,
         on(in_contest, headers(Content_Type="application/octet-stream")), published_whole),
    Case("http-empty-200", "http", "a precinct answers 200 with an empty body", 0, True,
         on(PRECINCT, lambda _, r: r.with_body(b"")),
         (("coverage warning W3", coverage_warned),)),
    Case("http-election-500", "http", "the election page always answers 500", 1, False,
         on(ELECTION_PATH, status(500)),
         (("stderr says unavailable", lambda o: "unavailable" in o.stderr),)),
    Case("http-portal-down", "faults", "nothing listens on the portal's port", 1, False,
         run=run_portal_down),
    # ---- markup
    Case("markup-garbage", "markup", "a precinct answers binary garbage", 0, True,
         on(PRECINCT, lambda _, r: r.with_body(bytes(range(256)) * 8)),
         (("coverage warning W3", coverage_warned),)),
    Case("markup-unclosed", "markup", "no </td> or </tr> anywhere (HTML allows it)", 0, True,
         on(in_contest, text(lambda b: b.replace("</td>", "").replace("</tr>", ""))),
         published_whole),
    Case("markup-uppercase", "markup", "tags in upper case", 0, True,
         on(in_contest, text(lambda b: re.sub(r"<(/?)(table|tr|td|th|thead|tbody|h1)\b",
                                              lambda m: f"<{m[1]}{m[2].upper()}", b))),
         published_whole),
    Case("markup-script-decoy", "markup",
         "a fake results table inside <script> and a comment", 0, True,
         on(in_contest, text(lambda b: b.replace(
             "</body>", '<script>document.write("<table class=results><tr><th>№</th>'
             '<th>Наименование</th><th>Число голосов</th></tr><tr><td>1</td><td>X</td>'
             '<td>999999</td></tr></table>")</script><!-- <table class="results"><tr><td>1'
             "</td></tr></table> --></body>"))),
         published_whole),
    Case("markup-layout-table", "markup", "the content wrapped in a layout table", 0, True,
         on(in_contest, text(lambda b: b.replace("<body>", "<body><table><tr><td>")
                             .replace("</body>", "</td></tr></table></body>"))),
         published_whole),
    Case("markup-bom", "markup", "a UTF-8 byte-order mark before <!doctype>", 0, True,
         on(in_contest, lambda _, r: r.with_body(b"\xef\xbb\xbf" + r.body)), published_whole),
    Case("markup-two-results-tables", "markup", "a precinct shows its results table twice", 0,
         True, on(PRECINCT, text(lambda b: re.sub(r'(<table class="results">.*?</table>)',
                                                   r"\1\1", b, flags=re.S))),
         (("failure says two results tables", failure_of(PRECINCT, "single results table")),
          ("coverage warning W3", coverage_warned))),
    Case("markup-no-heading", "markup", "a precinct without its <h1>", 0, True,
         on(PRECINCT, text(lambda b: re.sub(r"<h1[^>]*>.*?</h1>", "", b))),
         (("failure says heading", failure_of(PRECINCT, "heading")),)),
    # ---- encodings
    Case("enc-cp1251-header", "encodings", "windows-1251, charset in Content-Type only", 0, True,
         on(in_contest, cp1251("text/html; charset=windows-1251", meta=None)),
         (*published_whole, verbatim_name(NAME_1001),
          ("archive index: windows-1251 from the header",
           encoding_recorded(PRECINCT, "windows-1251", "header")),
          ("Kyrgyz letters (entities in cp1251) intact", lambda o: o.query(
              "select count(*) from results where choice_name = 'Жээнбеков Сүйүнбек Ормонович'"
          )[0][0] == 29))),
    Case("enc-cp1251-meta", "encodings", "windows-1251 declared in <meta> only", 0, True,
         on(in_contest, cp1251("text/html", meta="windows-1251")),
         (*published_whole, verbatim_name(NAME_1001),
          ("archive index: windows-1251 from <meta>",
           encoding_recorded(PRECINCT, "windows-1251", "meta")))),
    Case("enc-cp1251-header-lies", "encodings",
         "windows-1251 body, header says utf-8, <meta> says windows-1251", 0, True,
         on(in_contest, cp1251("text/html; charset=utf-8", meta="windows-1251")),
         (*published_whole, verbatim_name(NAME_1001),
          ("archive index: windows-1251 from <meta>",
           encoding_recorded(PRECINCT, "windows-1251", "meta")))),
    Case("enc-cp1251-undeclared", "encodings", "windows-1251 declared nowhere", 0, True,
         on(in_contest, cp1251("text/html", meta=None)),
         (*published_whole, verbatim_name(NAME_1001),
          ("archive index: detected", lambda o: all(
              e.get("encoding_source") == "detected" for e in o.index_entries()
              if e["url"] == o.url(PRECINCT))))),
    Case("enc-koi8r-header", "encodings", "KOI8-R with charset in Content-Type", 0, True,
         on(in_contest, chain(text(lambda b: b.replace('<meta charset="utf-8">', ""), "koi8-r"),
                              headers(Content_Type="text/html; charset=koi8-r"))),
         (*published_whole, verbatim_name(NAME_1001))),
    Case("enc-utf8-labelled-latin1", "encodings",
         "a UTF-8 body whose header says iso-8859-1", 0, True,
         on(in_contest, headers(Content_Type="text/html; charset=iso-8859-1")),
         (*published_whole, verbatim_name(NAME_1001))),
    # ---- numbers
    Case("num-negative-votes", "numbers", "a precinct's vote cell reads -5", 3, False,
         on(PRECINCT, first_votes("-5")), (quarantined_by("C5"),
                                            ("no page failed", no_failures))),
    Case("num-minus-sign-votes", "numbers", "a vote cell reads −5 (U+2212)", 3, False,
         on(PRECINCT, first_votes("−5")), (quarantined_by("C5"),)),
    Case("num-fractional-votes", "numbers", "a vote cell reads 12.5", 3, False,
         on(PRECINCT, first_votes("12.5")),
         (quarantined_by("C5"), ("no page failed", no_failures),
          ("snapshot.json lists the cell", lambda o: any(
              c["text"] == "12.5" and c["division_id"] == "1001"
              for c in o.snapshot_meta()["fractional_counts"])))),
    Case("num-fractional-cast", "numbers", "ballots cast reads 795,5", 3, False,
         on(PRECINCT, sub("<td>795</td>", "<td>795,5</td>")), (quarantined_by("C5"),)),
    Case("num-votes-over-cast", "numbers", "a line's votes exceed the ballots cast", 3, False,
         on(PRECINCT, first_votes("99 999")), (quarantined_by("C3"),)),
    Case("num-counted-over-total", "numbers", "protocols counted 5 of 1", 3, False,
         on(PRECINCT, sub("<td>1 из 1</td>", "<td>5 из 1</td>")), (quarantined_by("C5"),)),
    Case("num-negative-registered", "numbers", "registered voters -3 154", 3, False,
         on(PRECINCT, sub("<td>3 154</td>", "<td>-3 154</td>")), (quarantined_by("C5"),)),
    Case("num-percent-over-100", "numbers", "a percentage of 250%", 3, False,
         on(PRECINCT, sub("3,02%", "250,00%")), (quarantined_by("C5"),)),
    Case("num-garbage-cell", "numbers", "a vote cell reads 12a4 (unreadable)", 0, True,
         on(PRECINCT, first_votes("12a4")),
         (("failure names the cell", failure_of(PRECINCT, "12a4")),
          ("coverage warning W3", coverage_warned))),
    # ---- names (stored verbatim)
    Case("names-entities", "names", "HTML entities and markup-like text in a name", 0, True,
         on(PRECINCT, sub("УИК №1001</h1>",
                          "&lt;script&gt;alert(1)&lt;/script&gt; &amp; «Ата» &quot;№1001&quot;</h1>")),
         (verbatim_name('<script>alert(1)</script> & «Ата» "№1001"'),)),
    Case("names-rtl", "names", "right-to-left text and a U+202E override in a name", 0, True,
         on(PRECINCT, sub("УИК №1001</h1>", "\u202eУИК 1001 مركز الاقتراع שלום</h1>")),
         (verbatim_name("\u202eУИК 1001 مركز الاقتراع שלום"),)),
    Case("names-300-chars", "names", "a 300-character division name", 0, True,
         on(PRECINCT, sub("УИК №1001</h1>", "Я" * 300 + "</h1>")),
         (verbatim_name("Я" * 300),)),
    Case("names-sql", "names", "quotes and SQL in a division name", 0, True,
         on(PRECINCT, sub("УИК №1001</h1>", "Robert'); DROP TABLE results;-- \"x\" `y`</h1>")),
         (verbatim_name("Robert'); DROP TABLE results;-- \"x\" `y`"),
          ("results table still there", lambda o: o.query("select count(*) from results")[0][0] > 0))),
    Case("names-candidate-hostile", "names",
         "a candidate named with quotes, SQL and an emoji on every page", 0, True,
         on(in_contest, sub("Ли Евгений Александрович", "Ли \"Евгений\" O'Brien; --🗳")),
         (figures_intact, ("candidate №1 stored verbatim on all 29 pages", lambda o: o.query(
             "select count(*) from results where choice_name = ?",
             "Ли \"Евгений\" O'Brien; --🗳")[0][0] == 29))),
    Case("names-zero-width", "names", "zero-width and no-break spaces in a name", 0, True,
         on(PRECINCT, sub("УИК №1001</h1>", "УИК\u200b №\u00a01001</h1>")),
         (("stored with the zero-width space", lambda o: "\u200b" in (division_name(o, "1001") or "")),)),
    # ---- structure
    Case("struct-reordered-columns", "structure", "votes and % columns swapped", 0, True,
         on(in_contest, text(_swap_votes_and_pct)), published_whole),
    Case("struct-renamed-columns", "structure", "column headers reworded", 0, True,
         on(in_contest, sub("<th>Число голосов</th>", "<th>Голоса избирателей (число)</th>")),
         published_whole),
    Case("struct-extra-column", "structure", "an extra column in the results table", 0, True,
         on(in_contest, text(lambda b: re.sub(r"(<td>[^<]*</td><td>[^<]*</td><td>[^<]*%</td>)</tr>",
                                                r"\1<td>+0,1</td></tr>", b)
                             .replace("<th>%</th></tr>", "<th>%</th><th>Изменение</th></tr>"))),
         published_whole),
    Case("struct-unreadable-header", "structure", "a precinct's votes header is 'Итого'", 0, True,
         on(PRECINCT, sub("<th>Число голосов</th>", "<th>Итого</th>")),
         (("failure names the votes column", failure_of(PRECINCT, "votes")),)),
    Case("struct-missing-results", "structure", "a counted precinct without a results table", 3,
         False, on(PRECINCT, text(lambda b: re.sub(r'<table class="results">.*?</table>', "", b,
                                                   flags=re.S))),
         (quarantined_by("C2"),)),
    Case("struct-extra-level", "structure",
         "an intermediate level between the root and the precincts", 0, True,
         chain(extra_level, serve_extra_level),
         (("precincts hang under the new level", lambda o: o.query(
             "select count(*) from divisions where contest_id = ? and parent_id = 'x1'",
             CONTEST)[0][0] == 28),),
         ),
    Case("struct-offhost-child", "structure", "the root links a child on another host", 0, True,
         checks=(("no page failed", no_failures), ("all 29 divisions loaded", all_divisions)),
         run=run_offhost_link),
    Case("struct-query-variants", "structure",
         "a precinct links its 27 siblings again with ?sort=… (query-string variants)", 0, True,
         on(PRECINCT, text(_query_variants)),
         (*published_whole, ("variants never requested", _reject_sort_queries),
          ("summary lists links not followed", lambda o: "link not followed" in o.stdout),
          ("snapshot.json limits list them",
           lambda o: len(o.snapshot_meta()["limits"]["refused_links"]) == 27))),
    Case("struct-page-cap", "structure", "CEC_MAX_PAGES=10 on a 29-page contest", 0, True,
         checks=(("19 pages listed as refused by the cap", lambda o: len(
             o.snapshot_meta()["limits"]["refused_pages"]) == 19),
             ("coverage warning W3", coverage_warned),
             ("summary says so", lambda o: "CEC_MAX_PAGES" in o.stdout)),
         env={"CEC_MAX_PAGES": "10"}),
    Case("struct-renamed-protocol-row", "structure",
         "the 'protocols processed' row renamed: nothing counts as counted", 3, False,
         on(in_contest, sub("Обработано протоколов УИК", "Учтено участковых комиссий")),
         (quarantined_by("C2"),)),
    # ---- faults
    Case("fault-disk-full", "faults",
         "the archive cannot grow (RLIMIT_FSIZE), then space returns", 0, True,
         checks=published_whole, run=run_disk_full),
)

def by_name() -> dict[str, Case]:
    """The corpus by case name."""
    return {case.name: case for case in CASES}

