"""Build the election-night site: `index.html` (the night) and one page per snapshot.

Layout of the output directory:
  index.html                  the night: one row per run, the timeline, the seat projection
  snapshots/<snapshot>.html   one snapshot: results, seats, map, data quality, forensics
  snapshots/<snapshot>.json   the figures the index needs, so the index never re-reads frames
  raw/<sha256>.html           copies of the archived portal pages behind failing divisions
  assets/vega-bundle.js       Vega, Vega-Lite and vega-embed (from vl-convert), no CDN

A snapshot's page is rebuilt when it is missing, when its contests' statuses changed (a
reprocess), or when asked for by id; the index is rebuilt every time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl import config
from etl.archive import RawArchive
from etl.quality.catalog import CHECKS_BY_ID
from etl.report import charts, forensics
from etl.report.night import (
    Contest,
    Run,
    Snapshot,
    contest_rules,
    division_url,
    election_rules,
    main_contest,
    read_runs,
    read_snapshot,
    warehouse_statuses,
)
from etl.report.pages import chart_slot, esc, link, number, page, pct, table
from etl.report.paths import page_name, site_dir, snapshot_page_path
from etl.report.regions import match_region
from etl.seats import ContestLine, allocate_contest

log = logging.getLogger(__name__)

BUNDLE = Path("assets") / "vega-bundle.js"
MAX_FAILURES_LISTED = 20  # per check and contest; the rest are in dq_results
MAX_RAW_COPIES = 200


@dataclass(frozen=True)
class SiteSummary:
    """What one build wrote."""

    index: Path
    pages_written: tuple[Path, ...]
    runs: int


def build_report(election_id: str, out_dir: Path | None = None, *, snapshot_id: str | None = None,
                 warehouse_url: str | None = None) -> SiteSummary:
    """Write (or refresh) the election's report site; return what was written."""
    out = Path(out_dir) if out_dir is not None else site_dir(election_id)
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    _write_bundle(out)
    warehouse = warehouse_url or config.warehouse_url()
    runs = read_runs(election_id)
    try:
        current = warehouse_statuses(warehouse, election_id)
    except Exception as exc:  # the report still shows what the cycle log says
        log.warning("cannot read contest statuses from the warehouse (%s): using the cycle log", exc)
        current = {}
    wanted = {r.snapshot_id for r in runs if r.snapshot_id} | ({snapshot_id} if snapshot_id else set())
    rules = election_rules(election_id)
    written = []
    for sid in sorted(wanted):
        statuses = {c: s for c, (s, _) in current.get(sid, {}).items()} or next(
            (r.statuses for r in runs if r.snapshot_id == sid), {})
        summary_path = snapshot_page_path(out, sid).with_suffix(".json")
        if (sid != snapshot_id and summary_path.exists() and snapshot_page_path(out, sid).exists()
                and json.loads(summary_path.read_text(encoding="utf-8")).get("statuses") == statuses):
            continue  # written before, and no contest changed status since
        snapshot = read_snapshot(election_id, sid, warehouse)
        written.append(_write_snapshot_page(out, snapshot, statuses, current.get(sid, {}), rules))
    index = _write_index(out, election_id, runs, rules)
    log.info("report of %s: %d runs, %d snapshot pages written, index %s", election_id, len(runs),
             len(written), index)
    return SiteSummary(index, tuple(written), len(runs))


def _write_bundle(out: Path) -> None:
    target = out / BUNDLE
    if target.exists():
        return
    from importlib.metadata import version as version_of

    import altair as alt
    import vl_convert

    target.parent.mkdir(parents=True, exist_ok=True)
    version = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]  # "6.4", what Altair writes
    # Bundling takes seconds (tens on a busy machine): do it once per vl-convert version and
    # keep it in the user's cache, copied into each site.
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cached = cache_root / "cec-results-etl" / f"vega-bundle-{version_of('vl-convert-python')}-vl{version}.js"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        # The snippet puts the three libraries on `window` for the pages' inline script.
        snippet = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"
        _atomic_write(cached, vl_convert.javascript_bundle(snippet, vl_version=version))
    shutil.copyfile(cached, target)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two builders may race
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _portal_time(value: str | None) -> str | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment.strftime("%d.%m %H:%M")


# --------------------------------------------------------------------------- snapshot page


def _write_snapshot_page(out: Path, snapshot: Snapshot, statuses: dict[str, str],
                         reasons: dict[str, tuple[str, str | None]], rules: Any) -> Path:
    contests = sorted(set(snapshot.divisions["contest_id"].dropna().astype(str)) | set(statuses))
    main = main_contest(rules, contests)
    body = [f"<nav>{link('../index.html', '← the night')}</nav>"]
    charts_: dict[str, dict[str, Any]] = {}
    portal_time = _portal_time(snapshot.meta.get("portal_updated_at")) or "no portal time"
    summary: dict[str, Any] = {"snapshot_id": snapshot.snapshot_id, "statuses": statuses,
                               "portal_updated_at": snapshot.meta.get("portal_updated_at"),
                               "counted_pct": None, "parties_pct": None, "seats": []}
    body.append(f"<h1>Snapshot of {esc(portal_time)} — {esc(snapshot.election_id)}</h1>")
    counts = pd.Series(list(statuses.values())).value_counts().to_dict() if statuses else {}
    body.append(table(["", ""], [
        ["snapshot", esc(snapshot.snapshot_id)],
        ["portal updated at", esc(str(snapshot.meta.get("portal_updated_at")))],
        ["fetched at", esc(str(snapshot.meta.get("fetched_at")))],
        ["pages fetched / failed", f"{esc(str(snapshot.meta.get('pages_fetched')))} / "
                                   f"{esc(str(snapshot.meta.get('pages_failed')))}"],
        ["contests", esc(", ".join(f"{n} {s}" for s, n in counts.items()) or "no status recorded")],
        ["read from", esc(snapshot.source)],
    ]))
    if main is not None:
        contest = Contest.of(snapshot, main)
        status = statuses.get(main, "unknown")
        national = contest.national()
        summary["counted_pct"], summary["parties_pct"] = national.counted_pct, national.parties_pct
        body.append(f"<h2>National results — {esc(main)} "
                    f"<span class='{esc(status)}'>({esc(status)})</span></h2>")
        if status != "published":
            reason = reasons.get(main, (status, None))[1]
            body.append(f"<div class='banner'><b>Not published: {esc(status)}.</b> "
                        f"{esc(reason or '')} The figures below are what the portal showed; "
                        "data teams never saw them. See the data-quality section.</div>")
        body.append(f"<p>Protocols counted: <b>{pct(national.counted_pct)}</b>; sum of the parties' "
                    f"published percentages: <b>{pct(national.parties_pct)}</b> (below 100% on a "
                    "correct page: the base is everyone who took part, invalid ballots included); "
                    f"ballots cast {number(national.ballots_cast)}, registered "
                    f"{number(national.registered)}.</p>")
        crules = contest_rules(rules, main)
        lines = contest.lines(contest.root_id)
        if not lines.empty:
            body.append(chart_slot("chart-national"))
            charts_["chart-national"] = charts.national_bars(
                _bar_lines(lines, national.ballots_cast, crules.threshold_pct if crules else None),
                crules.threshold_pct if crules else None)
            seats = _seats(lines, national, crules)
            if seats is not None:
                summary["seats"] = seats[["party", "seats"]].to_dict("records")
                body.append("<h2>Seat projection</h2>")
                body.append(f"<p class='note'>{crules.seats if crules else ''} seats by "
                            f"{esc(str(crules.method if crules else ''))}, threshold "
                            f"{crules.threshold_pct if crules else ''}% of "
                            f"{esc(crules.threshold_base if crules else '')}, computed from "
                            "this snapshot's votes (a projection while counting goes on).</p>")
                body.append(chart_slot("chart-seats"))
                charts_["chart-seats"] = charts.seat_bar(seats, crules.seats if crules else 0)
        body += _regions_section(contest, charts_)
        body += _forensics_section(contest, charts_)
    body += _quality_section(out, snapshot)
    body += _contests_section(snapshot, contests, statuses, reasons)
    path = snapshot_page_path(out, snapshot.snapshot_id)
    _atomic_write(path, page(f"{snapshot.election_id} {portal_time}", body, charts_,
                             f"../{BUNDLE.as_posix()}"))
    _atomic_write(path.with_suffix(".json"), json.dumps(summary, ensure_ascii=False, indent=1))
    return path


def _line_label(row: Any) -> str:
    if bool(row.is_against_all):
        return "against all"
    if row.choice_position is pd.NA or row.choice_position is None:
        return str(row.choice_name)
    return f"№{row.choice_position} {row.choice_name}"


def _bar_lines(lines: pd.DataFrame, ballots_cast: int | None, threshold: float | None) -> pd.DataFrame:
    frame = pd.DataFrame({
        "line": [_line_label(r) for r in lines.itertuples(index=False)],
        "pct_published": lines["pct_published"].astype("Float64").to_numpy(dtype=float, na_value=np.nan),
        "pct_computed": lines["pct_computed"].astype("Float64").to_numpy(dtype=float, na_value=np.nan),
        "against": lines["is_against_all"].astype(bool).to_numpy(),
    })
    frame["passes"] = np.where(frame["against"], "against all",
                               np.where(frame["pct_computed"] >= (threshold or 0), "passes", "below"))
    return frame.drop(columns="against").replace({np.nan: None})


def _seats(lines: pd.DataFrame, national: Any, crules: Any) -> pd.DataFrame | None:
    if crules is None or crules.kind != "party_list":
        return None
    contest_lines = [ContestLine(line_no=i, choice_position=_int(r.choice_position),
                                 choice_name=str(r.choice_name), is_against_all=bool(r.is_against_all),
                                 votes=_int(r.votes))
                     for i, r in enumerate(lines.itertuples(index=False))]
    try:
        allocated = allocate_contest(contest_lines, kind=crules.kind, seats=crules.seats,
                                     method=crules.method, threshold_pct=crules.threshold_pct,
                                     threshold_base=crules.threshold_base,
                                     ballots_cast=national.ballots_cast, valid=national.valid)
    except ValueError as exc:  # duplicate or missing ballot numbers: no projection
        log.warning("no seat projection: %s", exc)
        return None
    rows = [{"party": f"№{s.choice_position} {s.choice_name}", "seats": int(s.seats or 0),
             "order": i} for i, s in enumerate(sorted(allocated, key=lambda s: -(s.seats or 0)))
            if (s.seats or 0) > 0]
    return pd.DataFrame(rows, columns=["party", "seats", "order"])


def _int(value: Any) -> int | None:
    return None if value is None or value is pd.NA else int(value)


def _regions_section(contest: Contest, charts_: dict[str, dict[str, Any]]) -> list[str]:
    regions = contest.children(contest.root_id)
    if regions.empty:
        return []
    rows: list[dict[str, Any]] = []
    body = ["<h2>Regions</h2>"]
    national_lines = contest.lines(contest.root_id)
    top = national_lines[~national_lines["is_against_all"].astype(bool)].sort_values(
        "votes", ascending=False).head(6)
    top_names = [str(n) for n in top["choice_name"]]
    for division in regions.itertuples(index=False):
        figures = contest.figures(str(division.division_id))
        lines = contest.lines(str(division.division_id))
        parties = lines[~lines["is_against_all"].astype(bool)].dropna(subset=["votes"])
        leader = str(parties.sort_values("votes", ascending=False)["choice_name"].iloc[0]) \
            if len(parties) and parties["votes"].max() > 0 else None
        registered, cast = figures.get("registered"), figures.get("ballots_cast")
        shares = {str(r.choice_name): (None if r.pct_computed is pd.NA else float(r.pct_computed))
                  for r in lines.itertuples(index=False)}
        match = match_region(str(division.name))
        rows.append({"region": str(division.name), "pcode": match.pcode, "leader": leader,
                     "turnout": cast / registered * 100 if cast is not None and registered else None,
                     "counted": figures.get("precincts_counted"), "total": figures.get("precincts_total"),
                     **{name: shares.get(name) for name in top_names}})
    frame = pd.DataFrame(rows)
    on_map = frame[frame["pcode"].notna() & (frame["pcode"] != "abroad")]
    apart = frame[~frame.index.isin(on_map.index)]
    body.append("<div class='charts'>" + chart_slot("chart-map-leader") + chart_slot("chart-map-turnout")
                + "</div>")
    charts_["chart-map-leader"] = charts.region_map(on_map.assign(leader=on_map["leader"].fillna("none")),
                                                    "leader", "leading party", nominal=True)
    charts_["chart-map-turnout"] = charts.region_map(on_map, "turnout", "turnout %", nominal=False)
    if not apart.empty:
        body.append("<p class='note'>Not on the map: " + "; ".join(
            f"{esc(r.region)} ({'abroad' if r.pcode == 'abroad' else 'no shape matches this name'}): "
            f"leading {esc(str(r.leader or '–'))}, turnout {pct(r.turnout)}"
            for r in apart.itertuples(index=False)) + ".</p>")
    body.append(table(
        ["region", "protocols", "turnout", "leading", *top_names],
        [[esc(r["region"]), f"{number(r['counted'])} / {number(r['total'])}", pct(r["turnout"]),
          esc(str(r["leader"] or "–")), *[pct(r[n]) for n in top_names]] for r in rows],
        numeric=[1, 2, *range(4, 4 + len(top_names))]))
    body.append("<p class='note'>Shares are computed from votes / ballots cast; region names are "
                "matched to the map by the table in etl/report/README.md.</p>")
    return body


def _forensics_section(contest: Contest, charts_: dict[str, dict[str, Any]]) -> list[str]:
    counts = contest.precinct_counts()
    body = ["<h2>Forensic signals</h2>",
            "<p class='note'>Warnings for a person to look at, never a reason to quarantine: "
            f"{counts.registered.size:,} counted precincts of {esc(contest.contest_id)}.</p>"]
    signals = forensics.all_signals(counts)
    body.append(table(["signal", "result", "what it means", "figures"], [
        [esc(s.title), f"<b>{esc(s.verdict)}</b>", esc(s.explanation), esc(s.detail)] for s in signals],
        row_classes=["warning" if s.flagged else ("" if s.tested else "unavailable") for s in signals]))
    if counts.registered.size:
        turnout, share, leader = forensics.turnout_and_leader_share(counts)
        body.append("<div class='charts'>" + chart_slot("chart-fingerprint")
                    + chart_slot("chart-last-digits") + "</div>")
        charts_["chart-fingerprint"] = charts.fingerprint(turnout, share, leader)
        charts_["chart-last-digits"] = charts.last_digits(forensics.last_digit_frequencies(counts))
    return body


def _breadcrumbs(divisions: pd.DataFrame) -> dict[tuple[str, str], str]:
    parents = {(str(r.contest_id), str(r.division_id)): (None if r.parent_id is pd.NA else str(r.parent_id),
                                                        str(r.name))
               for r in divisions.itertuples(index=False)}
    crumbs: dict[tuple[str, str], str] = {}
    for key in parents:
        names, current, seen = [], key, set()
        while current in parents and current not in seen:
            seen.add(current)
            parent, name = parents[current]
            names.append(name)
            if parent is None:
                break
            current = (current[0], parent)
        crumbs[key] = " › ".join(reversed(names))
    return crumbs


def _quality_section(out: Path, snapshot: Snapshot) -> list[str]:
    dq = snapshot.dq_results
    body = ["<h2>Data quality</h2>"]
    if dq.empty:
        return [*body, "<p class='banner'>No quality results for this snapshot: the gate did not "
                       "run or its results are missing. Nothing here is checked.</p>"]
    failed = dq[~dq["success"].astype(bool)]
    summaries = failed[failed["division_id"].isna()]
    rows = failed[failed["division_id"].notna()]
    if failed.empty:
        checked = dq[dq["division_id"].isna()]
        return [*body, f"<p class='ok'>All {len(checked)} checks passed "
                       f"({', '.join(sorted(set(checked['check_id'].astype(str))))}).</p>"]
    body.append(table(["check", "severity", "contest", "observed", "message"], [
        [esc(f"{r.check_id} {CHECKS_BY_ID[str(r.check_id)].title}" if str(r.check_id) in CHECKS_BY_ID
             else str(r.check_id)), esc(str(r.severity)),
         esc("(all)" if r.contest_id is pd.NA else str(r.contest_id)), esc(str(r.observed)),
         esc(str(r.message))] for r in summaries.itertuples(index=False)],
        row_classes=[str(s) for s in summaries["severity"]]))
    crumbs = _breadcrumbs(snapshot.divisions)
    names = {(str(r.contest_id), str(r.division_id), int(r.choice_position)): r
             for r in snapshot.results.dropna(subset=["choice_position"]).itertuples(index=False)}
    roots = set(zip(snapshot.divisions.loc[snapshot.divisions["parent_id"].isna(), "contest_id"].astype(str),
                    snapshot.divisions.loc[snapshot.divisions["parent_id"].isna(), "division_id"].astype(str),
                    strict=True))
    archive = RawArchive(config.raw_dir()) if (config.raw_dir() / "index.jsonl").exists() else None
    copies = 0
    portal, lang = str(snapshot.meta.get("portal", "")), str(snapshot.meta.get("lang", "ru"))
    for (check_id, contest_id), group in rows.groupby(["check_id", "contest_id"], sort=False, dropna=False):
        severity = str(group["severity"].iloc[0])
        title = CHECKS_BY_ID[str(check_id)].title if str(check_id) in CHECKS_BY_ID else ""
        body.append(f"<h3 class='{esc(severity)}'>{esc(str(check_id))} {esc(title)} · {esc(str(contest_id))}"
                    f" · {severity} · {len(group)} failing row(s)</h3>")
        listed = []
        for r in group.head(MAX_FAILURES_LISTED).itertuples(index=False):
            key = (str(r.contest_id), str(r.division_id))
            line = names.get((*key, int(r.choice_position))) if r.choice_position is not pd.NA else None
            ballot = "–" if line is None else esc(_line_label(line))
            links = []
            if portal:
                url = division_url(portal, lang, snapshot.election_id, key[0], key[1], key in roots)
                sha = snapshot.page_urls.get(url)
                if sha and archive is not None and copies < MAX_RAW_COPIES:
                    copied = _copy_raw(out, archive, sha)
                    if copied:
                        copies += 1
                        links.append(link(f"../raw/{sha}.html", "archived page"))
                links.append(link(url, "portal page"))
            listed.append([esc(crumbs.get(key, key[1])), ballot, esc(str(r.observed)),
                           esc(str(r.expected)), pct(_float(line, "pct_published")),
                           pct(_float(line, "pct_computed")), esc(str(r.message)), " · ".join(links)])
        body.append(table(["division", "ballot line", "observed", "expected", "published %",
                           "computed %", "message", "pages"], listed, numeric=[4, 5]))
        if len(group) > MAX_FAILURES_LISTED:
            body.append(f"<p class='note'>… and {len(group) - MAX_FAILURES_LISTED} more rows in "
                        "dq_results (warehouse table or the snapshot's dq_results.parquet).</p>")
    return body


def _float(line: Any, name: str) -> float | None:
    value = None if line is None else getattr(line, name)
    return None if value is None or value is pd.NA else float(value)


def _copy_raw(out: Path, archive: RawArchive, sha256: str) -> bool:
    target = out / "raw" / f"{sha256}.html"
    if target.exists():
        return True
    try:
        body = archive.read(sha256)
    except FileNotFoundError:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    return True


def _contests_section(snapshot: Snapshot, contests: list[str], statuses: dict[str, str],
                      reasons: dict[str, tuple[str, str | None]]) -> list[str]:
    rows, classes = [], []
    # Only each contest's root division is shown: its rows are picked once, instead of
    # every frame filtered once per contest (0.4 s of a page at kg2021's 37 contests).
    roots = snapshot.divisions[snapshot.divisions["parent_id"].isna()]
    keys = pd.MultiIndex.from_frame(roots[["contest_id", "division_id"]])
    at_roots = replace(snapshot, divisions=roots, **{
        name: frame[pd.MultiIndex.from_frame(frame[["contest_id", "division_id"]]).isin(keys)]
        for name, frame in (("turnout", snapshot.turnout), ("results", snapshot.results))})
    for contest_id in contests:
        contest = Contest.of(at_roots, contest_id)
        lines = contest.lines(contest.root_id).dropna(subset=["votes"])
        leader = "–"
        if len(lines) and lines["votes"].max() > 0:
            leader = _line_label(next(lines.sort_values("votes", ascending=False).itertuples(index=False)))
        national = contest.national()
        status = statuses.get(contest_id, "unknown")
        rows.append([esc(contest_id), esc(status), pct(national.counted_pct), esc(leader),
                     esc(reasons.get(contest_id, (status, None))[1] or "")])
        classes.append(status)
    return ["<h2>Contests</h2>", table(["contest", "status", "counted", "leading", "reason"], rows,
                                       row_classes=classes, numeric=[2])]


# --------------------------------------------------------------------------- night index


def _run_label(run: Run, portal_time: str | None) -> str:
    return f"{run.number}. {portal_time or run.status}"


def _write_index(out: Path, election_id: str, runs: list[Run], rules: Any) -> Path:
    summaries = {}
    for run in runs:
        if run.snapshot_id:
            path = snapshot_page_path(out, run.snapshot_id).with_suffix(".json")
            if path.exists():
                summaries[run.snapshot_id] = json.loads(path.read_text(encoding="utf-8"))
    records = []
    for run in runs:
        summary = summaries.get(run.snapshot_id or "", {})
        portal_time = _portal_time(run.portal_updated_at)
        records.append({"run": _run_label(run, portal_time), "status": run.status,
                        "counted_pct": summary.get("counted_pct"), "parties_pct": summary.get("parties_pct"),
                        "incident": ""})
    frame = pd.DataFrame(records, columns=["run", "status", "counted_pct", "parties_pct", "incident"])
    for index, row in frame.iterrows():
        if row["status"] == "quarantined" and row["parties_pct"] is not None:
            frame.at[index, "incident"] = f"{row['parties_pct']:.2f}% quarantined"
        elif row["status"] in ("quarantined", "failed", "unavailable"):
            frame.at[index, "incident"] = str(row["status"])
    published = frame[(frame["status"] == "published") & frame["parties_pct"].notna()]
    if len(published):
        # The plateau: the published sum the press read as "14% lost" (it is correct).
        plateau = published["parties_pct"].astype(float).median()
        first = (published["parties_pct"].astype(float) - plateau).abs().idxmin()
        frame.at[first, "incident"] = f"{float(frame.at[first, 'parties_pct']):.2f}% published"
    charts_: dict[str, dict[str, Any]] = {}
    name = rules.name if rules is not None else election_id
    built = datetime.now().astimezone().isoformat(timespec="seconds")
    body = [f"<h1>Election night — {esc(name)}</h1>",
            f"<p class='note'>{len(runs)} runs of the pipeline; built {esc(built)}. "
            "Quarantined snapshots never reached the warehouse's views; their pages show why.</p>"]
    if runs:
        body.append(chart_slot("chart-timeline"))
        charts_["chart-timeline"] = charts.timeline(frame.replace({np.nan: None}))
        seats = [{"run": frame.at[i, "run"], "party": s["party"], "seats": s["seats"]}
                 for i, run in enumerate(runs) if run.status == "published"
                 for s in summaries.get(run.snapshot_id or "", {}).get("seats", [])]
        if seats:
            body.append(chart_slot("chart-seat-history"))
            charts_["chart-seat-history"] = charts.seat_history(pd.DataFrame(seats), frame["run"].tolist())
    rows, classes = [], []
    for run, record in zip(runs, records, strict=True):
        snapshot_cell = "–"
        if run.snapshot_id and run.snapshot_id in summaries:
            snapshot_cell = link(f"snapshots/{page_name(run.snapshot_id)}", run.snapshot_id)
        elif run.snapshot_id:
            snapshot_cell = esc(run.snapshot_id)
        rows.append([str(run.number), esc(_portal_time(run.portal_updated_at) or "–"),
                     esc(run.checked_at[:19].replace("T", " ")), pct(record["counted_pct"]),
                     pct(record["parties_pct"]), esc(run.status_detail), esc("; ".join(run.alerts) or "–"),
                     snapshot_cell])
        classes.append(run.status)
    body.append(table(["run", "portal time", "checked at (UTC)", "counted", "parties' sum", "status",
                       "alerts", "snapshot"], rows, row_classes=classes, numeric=[3, 4]))
    body.append("<p class='note'>“parties' sum” adds the published percentages of the party list's "
                "national page: 140–150% is the 2021 formula error (quarantined); 86.96% is correct "
                "(the base includes invalid ballots).</p>")
    path = out / "index.html"
    _atomic_write(path, page(f"Election night {election_id}", body, charts_, BUNDLE.as_posix()))
    return path
