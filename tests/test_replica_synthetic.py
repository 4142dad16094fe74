"""The `synthetic` replica scenario: deterministic, SPEC-shaped, consistent, one incident.

Small instances (a few hundred to 2,000 precincts) served over real HTTP, scraped by the
pipeline's own crawler and parser, and checked by the real quality gate.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from etl.quality import validate_snapshot
from etl.replica import ReplicaServer, load_scenario
from etl.replica.render import PortalRenderer
from etl.replica.synthetic import MISPRINT_LABEL, N_REGIONS, N_SINGLE_MEMBER, build_synthetic
from etl.scrape import scrape

ELECTION = "synth2030"


def _scrape(tmp_path: Path, precincts: int, at: str, name: str) -> Path:
    scenario = load_scenario("synthetic", precincts=precincts)
    out = tmp_path / name
    with ReplicaServer(scenario, at=at) as server:
        scrape(server.base_url, ELECTION, out, archive_root=tmp_path / "raw", concurrency=4,
               processes=1)
    return out


def test_same_seed_same_country_other_seed_other_country() -> None:
    first, again, other = (build_synthetic(7, precincts=600), build_synthetic(7, precincts=600),
                           build_synthetic(8, precincts=600))
    for contest_id, contest in first.contests.items():
        assert np.array_equal(contest.automatic, again.contests[contest_id].automatic)
        assert list(contest.divisions) == list(again.contests[contest_id].divisions)
    assert first.snapshots == again.snapshots
    assert not np.array_equal(first.contests["list"].automatic, other.contests["list"].automatic)


def test_four_levels_and_a_few_single_member_contests() -> None:
    scenario = load_scenario("synthetic", precincts=2_000)
    contest = scenario.contests["list"]
    levels = pd.Series([contest.divisions[d].level for d in contest.divisions]).value_counts()
    assert levels.to_dict() == {"precinct": 2_000, "district": 20, "region": N_REGIONS,
                                "country": 1}
    # every division's children lie under it, and the precincts of a region add up
    root = contest.divisions["0"]
    assert root.children == tuple(str(r) for r in range(1, N_REGIONS + 1))
    assert sum(len(contest.divisions[d].children)
               for r in root.children for d in contest.divisions[r].children) == 2_000
    single = [c for c in scenario.contests if c != "list"]
    assert len(single) == N_SINGLE_MEMBER
    for contest_id in single:
        okrug = scenario.contests[contest_id]
        assert okrug.divisions["0"].level == "constituency"
        assert {okrug.divisions[p].level for p in okrug.divisions["0"].children} == {"precinct"}
    with pytest.raises(ValueError, match="fixed size"):
        load_scenario("kg2021", precincts=2_000)


def test_counting_progresses_and_every_protocol_adds_up() -> None:
    scenario = load_scenario("synthetic", precincts=2_000)
    assert len(scenario.snapshots) >= 10
    previous = None
    for snapshot in scenario.snapshots:
        for contest_id in scenario.contests:
            tally = scenario.tally(snapshot.index, contest_id)
            if tally.precincts_counted:
                assert sum(tally.votes) + tally.against_all + tally.invalid == tally.ballots_cast
                assert tally.ballots_cast <= tally.ballots_issued <= tally.registered
        national = scenario.tally(snapshot.index, "list")
        if previous is not None:
            assert national.precincts_counted >= previous.precincts_counted
            assert national.ballots_cast >= previous.ballots_cast
            assert all(now >= before for now, before in zip(national.votes, previous.votes,
                                                            strict=True))
        previous = national
    assert scenario.tally(0, "list").precincts_counted == 0
    assert scenario.tally(len(scenario.snapshots) - 1, "list").precincts_counted == 2_000
    incidents = [s for s in scenario.snapshots if s.misprint is not None]
    assert [s.label for s in incidents] == [MISPRINT_LABEL]


def test_the_parser_reads_every_page_as_the_ground_truth(tmp_path: Path) -> None:
    scenario = load_scenario("synthetic", precincts=2_000)
    index = scenario.index_of("counting-4")  # 40% counted: counted and uncounted pages
    snapshot_dir = _scrape(tmp_path, 2_000, "counting-4", "snap")
    turnout = pd.read_parquet(snapshot_dir / "turnout.parquet")
    results = pd.read_parquet(snapshot_dir / "results.parquet")
    divisions = pd.read_parquet(snapshot_dir / "divisions.parquet")
    expected_pages = sum(len(c.divisions) for c in scenario.contests.values())
    assert len(turnout) == len(divisions) == expected_pages

    votes = results.set_index(["contest_id", "division_id"])
    for row in turnout.itertuples():
        contest = scenario.contests[row.contest_id]
        division = contest.divisions[row.division_id]
        tally = scenario.tally(index, row.contest_id, row.division_id)
        assert row.registered == tally.registered
        assert row.precincts_counted == tally.precincts_counted
        assert row.precincts_total == tally.precincts_total
        parent = divisions.loc[(divisions["contest_id"] == row.contest_id)
                               & (divisions["division_id"] == row.division_id), "parent_id"]
        assert (parent.iloc[0] if pd.notna(parent.iloc[0]) else None) == division.parent_id
        if not tally.precincts_counted:
            assert pd.isna(row.ballots_cast)
            continue
        assert (row.ballots_cast, row.invalid) == (tally.ballots_cast, tally.invalid)
        lines = votes.loc[(row.contest_id, row.division_id)]
        assert lines["votes"].tolist() == [*tally.votes, tally.against_all]
        assert lines["pct_published"].tolist() == [tally.pct(v)
                                                   for v in (*tally.votes, tally.against_all)]


def test_clean_snapshots_pass_the_gate_and_the_misprint_is_caught(tmp_path: Path) -> None:
    scenario = load_scenario("synthetic", precincts=500)
    before = _scrape(tmp_path, 500, "counting-6", "before")
    clean = validate_snapshot(before, report_dir=tmp_path / "reports")
    assert clean.critical_contests == frozenset()
    assert not clean.dq_results["success"].isna().any()

    misprinted = _scrape(tmp_path, 500, MISPRINT_LABEL, "misprint")
    outcome = validate_snapshot(misprinted, previous_dir=before, report_dir=tmp_path / "reports")
    assert outcome.critical_contests == {"list"}
    misprint = scenario.snapshots[scenario.index_of(MISPRINT_LABEL)].misprint
    assert misprint is not None
    failed = outcome.dq_results[~outcome.dq_results["success"]
                                & outcome.dq_results["division_id"].notna()]
    c3 = failed[failed["check_id"] == "C3"]
    assert c3["division_id"].tolist() == [misprint.division_id]
    assert set(failed["contest_id"]) == {"list"}

    after = _scrape(tmp_path, 500, "counting-7", "after")
    assert validate_snapshot(after, previous_dir=before,
                             report_dir=tmp_path / "reports").critical_contests == frozenset()


def test_a_page_validator_changes_exactly_when_the_page_does() -> None:
    # The replica answers a conditional request for an unchanged page from its validator,
    # without rendering it: the validator must be the page's identity, byte for byte.
    scenario = load_scenario("synthetic", precincts=300)
    renderer = PortalRenderer(scenario)
    paths = [f"/ru/results/{ELECTION}/{contest_id}/{division_id}/"
             for contest_id, contest in scenario.contests.items() for division_id in contest.divisions]
    for restamp in (timedelta(0), timedelta(seconds=90)):
        last: dict[str, tuple[str, bytes]] = {}
        unchanged = changed = 0
        for index in range(len(scenario.snapshots)):
            for path in paths:
                page = renderer.render(index, path, restamp=restamp)
                assert page is not None
                tag = renderer.validator(index, path, restamp=restamp)
                assert tag == page.etag  # what a 200 carries is what a 304 is decided on
                if path in last:
                    before_tag, before_body = last[path]
                    assert (tag == before_tag) == (page.body == before_body), (index, path)
                    unchanged += tag == before_tag
                    changed += tag != before_tag
                last[path] = (tag, page.body)
        assert unchanged and changed  # both cases were met
    kg2021 = PortalRenderer(load_scenario("kg2021"))
    assert kg2021.validator(0, "/ru/results/jk2021/list/") is None  # every page re-stamped


def test_an_unchanged_page_is_answered_304_and_a_recounted_one_200() -> None:
    scenario = load_scenario("synthetic", precincts=2_000)
    contest = scenario.contests["list"]
    precincts = [d for d in contest.divisions if contest.divisions[d].level == "precinct"]
    with ReplicaServer(scenario, at="counting-complete") as server, requests.Session() as http:
        before = {p: http.get(f"{server.base_url}/ru/results/{ELECTION}/list/{p}/") for p in precincts}
        server.replica.goto("final")
        answers = {p: http.get(f"{server.base_url}/ru/results/{ELECTION}/list/{p}/",
                               headers={"If-None-Match": before[p].headers["ETag"]})
                   for p in precincts}
    recounted = {p for p, answer in answers.items() if answer.status_code == 200}
    assert all(answers[p].status_code == 304 and answers[p].content == b""
               and answers[p].headers["ETag"] == before[p].headers["ETag"]
               for p in precincts if p not in recounted)
    assert 0 < len(recounted) < 0.1 * len(precincts)  # the 5% recounted by hand
    assert all(answers[p].content != before[p].content for p in recounted)
    # every answer, 304 or 200, carries the final snapshot's time
    modified = {answer.headers["Last-Modified"] for answer in answers.values()}
    assert len(modified) == 1 and modified != {before[precincts[0]].headers["Last-Modified"]}


def test_prerender_renders_the_changed_pages_ahead_and_serves_them_as_rendered_then() -> None:
    scenario = load_scenario("synthetic", precincts=2_000)
    contest = scenario.contests["list"]
    paths = [f"/ru/results/{ELECTION}/list/" if d == contest.root_id
             else f"/ru/results/{ELECTION}/list/{d}/" for d in contest.divisions]
    with ReplicaServer(scenario, at="counting-complete") as server, requests.Session() as http:
        renderer = server.replica.renderer
        at, final = server.index, scenario.resolve("final")
        changed = [p for p in paths if renderer.validator(final, p) != renderer.validator(at, p)]
        rendered = server.prerender("final")
        assert server.index == at  # the timeline did not move
        # The recounted precincts, their parents, every other contest's, the election pages.
        assert len(changed) < rendered < 0.2 * sum(len(c.divisions) for c in scenario.contests.values())
        calls: list[str] = []
        render = renderer.render
        renderer.render = lambda index, path, *a, **k: calls.append(path) or render(index, path, *a, **k)
        server.goto("final")
        served = {p: http.get(f"{server.base_url}{p}").content for p in changed}
        assert calls == []  # every changed page came from the cache
        renderer.render = render
        assert all(served[p] == render(final, p).body for p in changed)  # type: ignore[union-attr]


def test_a_restamp_can_render_every_page_ahead_and_keeps_the_unstamped_pages_it_derives_from(
) -> None:
    from etl.replica.server import CACHED_SNAPSHOTS

    scenario = load_scenario("synthetic", precincts=2_000)
    paths = ["/ru/results/", f"/ru/results/{ELECTION}/"] + [
        f"/ru/results/{ELECTION}/{c}/" if d == contest.root_id else f"/ru/results/{ELECTION}/{c}/{d}/"
        for c, contest in scenario.contests.items() for d in contest.divisions]
    with ReplicaServer(scenario, at="final") as server, requests.Session() as http:
        renderer = server.replica.renderer
        for path in paths:  # served once, unstamped: what re-stamped pages are made from
            assert http.get(f"{server.base_url}{path}").status_code == 200
        calls: list[str] = []
        render, restamped = renderer.render, renderer.restamped
        renderer.render = lambda index, path, *a, **k: calls.append(path) or render(index, path, *a, **k)
        # More re-stamps than the cache keeps snapshots: the unstamped pages stay.
        for seconds in range(60, 60 * (CACHED_SNAPSHOTS + 2), 60):
            rendered = server.restamp(seconds, "ru")
            assert rendered == len(paths)
        seconds += 60  # once more through the control endpoint, as benchmarks do
        state = http.post(f"{server.base_url}/_replica/restamp",
                          params={"seconds": seconds, "prerender": "ru"}).json()
        assert state["rendered"] == len(paths) and state["restamp_seconds"] == seconds
        # Each derived from the page served before the re-stamp (the list of elections
        # shows no time: rendered as it is).
        assert set(calls) == {"/ru/results/"}
        calls.clear()
        renderer.restamped = lambda *a, **k: calls.append("restamped") or restamped(*a, **k)
        served = {p: http.get(f"{server.base_url}{p}").content for p in paths}
        assert calls == []  # every page came from the cache, rendered ahead
        renderer.render, renderer.restamped = render, restamped
        index, moved = server.index, timedelta(seconds=seconds)
        assert all(served[p] == render(index, p, restamp=moved).body for p in paths)  # type: ignore[union-attr]
