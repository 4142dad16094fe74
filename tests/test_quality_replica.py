"""The quality gate on snapshots scraped from the portal replica's kg2021 timeline.

Each incident of 28 November – 15 December 2021 is served by the replica over real HTTP,
scraped by `etl.scrape` into a snapshot directory and validated like in production.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from etl import config
from etl.normalise import read_snapshot_frames, read_snapshot_meta
from etl.quality import ValidationOutcome, run_checks, validate_snapshot
from etl.quality.memo import GateMemo
from etl.replica.kg2021 import AGAINST_ALL_WINS, LEADING_POSITIONS
from etl.replica.server import ReplicaServer
from etl.scrape import scrape


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer("kg2021", at="final") as server:
        yield server


@pytest.fixture(scope="module")
def timeline(replica: ReplicaServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scrape the incident snapshots (the party list, plus the okrugs each story needs)."""
    root = tmp_path_factory.mktemp("kg2021")
    duplicate = replica.scenario.snapshots[replica.scenario.index_of("duplicate-candidate")]
    assert duplicate.duplicate is not None
    okrugs = sorted({duplicate.duplicate.contest_id, *AGAINST_ALL_WINS})
    plan = {
        "formula-error": ["list"],
        "preliminary": ["list", *sorted(AGAINST_ALL_WINS)],
        "recount-4": ["list"],
        "annulment": ["list"],
        "duplicate-candidate": okrugs,
        "final": None,  # every contest
    }
    dirs = {}
    for label, contests in plan.items():
        replica.goto(label)
        summary = scrape(replica.base_url, "jk2021", root / label, contests=contests,
                         archive_root=root / "raw")
        assert summary.meta["pages_failed"] == 0
        dirs[label] = root / label
    return dirs


def validated(dirs: dict[str, Path], label: str, previous: str | None, reports: Path) -> ValidationOutcome:
    return validate_snapshot(dirs[label], dirs[previous] if previous else None, reports)


def failures(outcome: ValidationOutcome, check_id: str | None = None) -> pd.DataFrame:
    dq = outcome.dq_results
    rows = dq[dq["division_id"].notna()]
    return rows if check_id is None else rows[rows["check_id"] == check_id]


def test_formula_error_is_quarantined_naming_the_doubled_lines(
    timeline: dict[str, Path], tmp_path: Path
) -> None:
    outcome = validated(timeline, "formula-error", None, tmp_path)
    assert outcome.critical_contests == frozenset({"list"})
    root_sum = failures(outcome, "C1").set_index("division_id").loc["0"]
    assert root_sum["message"].startswith("Кыргызская Республика (0), list: published percentages")
    assert 140 < float(root_sum["observed"]) < 160
    at_root = failures(outcome, "C4")
    at_root = at_root[at_root["division_id"] == "0"]
    assert set(at_root["choice_position"]) == set(LEADING_POSITIONS)
    assert at_root["message"].str.contains("2.00× the formula").all()
    # votes were right: no identity, coverage or reconciliation problem
    assert set(failures(outcome)["check_id"]) == {"C1", "C4"}


def test_preliminary_86_96_and_against_all_wins_raise_nothing(
    timeline: dict[str, Path], tmp_path: Path
) -> None:
    results = pd.read_parquet(timeline["preliminary"] / "results.parquet")
    root = results[(results["contest_id"] == "list") & (results["division_id"] == "0")]
    parties = root.loc[~root["is_against_all"].astype(bool), "pct_published"].sum()
    assert round(float(parties), 2) == 86.96
    outcome = validated(timeline, "preliminary", "formula-error", tmp_path)
    assert outcome.critical_contests == frozenset()
    assert failures(outcome).empty, failures(outcome)["message"].head().tolist()


def test_annulment_warns_of_revisions_and_is_published(
    timeline: dict[str, Path], tmp_path: Path
) -> None:
    outcome = validated(timeline, "annulment", "recount-4", tmp_path)
    assert outcome.critical_contests == frozenset()
    revisions = failures(outcome, "W2")
    assert set(failures(outcome)["check_id"]) == {"W2"}
    national = revisions[(revisions["division_id"] == "0") & revisions["choice_position"].isna()]
    assert national["message"].str.contains("went down from").any()
    # the annulled precincts themselves show nothing counted now
    counted = revisions[revisions["message"].str.contains("protocols counted went down from 1 to 0")]
    assert len(counted) == 20


def test_duplicate_candidate_is_quarantined_naming_the_line(
    timeline: dict[str, Path], replica: ReplicaServer, tmp_path: Path
) -> None:
    duplicate = replica.scenario.snapshots[replica.scenario.index_of("duplicate-candidate")].duplicate
    assert duplicate is not None
    outcome = validated(timeline, "duplicate-candidate", "annulment", tmp_path)
    assert outcome.critical_contests == frozenset({duplicate.contest_id})
    rows = failures(outcome, "C6")
    assert set(zip(rows["contest_id"], rows["division_id"], rows["choice_position"], strict=True)) == {
        (duplicate.contest_id, duplicate.division_id, duplicate.position)
    }
    assert len(rows) == 2


def test_final_snapshot_raises_nothing(timeline: dict[str, Path], tmp_path: Path) -> None:
    outcome = validated(timeline, "final", "duplicate-candidate", tmp_path)
    assert outcome.critical_contests == frozenset()
    assert failures(outcome).empty, failures(outcome)["message"].head().tolist()
    assert outcome.dq_results["contest_id"].nunique() == 37


# The gate memo (etl.quality.memo): outcomes of GX remembered by batch digest. Served from
# the memo, the gate must answer exactly as when GX validates every frame.
MEMO_CASES = [("formula-error", None), ("annulment", "recount-4"), ("duplicate-candidate", None),
              ("final", None)]


def checked(dirs: dict[str, Path], label: str, previous: str | None,
            memo: GateMemo | None = None, snapshot_id: str | None = None) -> pd.DataFrame:
    """`run_checks` on a timeline snapshot (its id replaced if given, as a re-stamp does)."""
    frames, meta = read_snapshot_frames(dirs[label]), read_snapshot_meta(dirs[label])
    if snapshot_id is not None:
        frames = {name: frame.assign(snapshot_id=snapshot_id) for name, frame in frames.items()}
        meta = meta | {"snapshot_id": snapshot_id}
    before = read_snapshot_frames(dirs[previous]) if previous else None
    return run_checks(frames["divisions"], frames["turnout"], frames["results"], meta,
                      (before["turnout"], before["results"]) if before else None, memo=memo)


def memo_of(dirs: dict[str, Path], label: str, path: Path) -> GateMemo:
    """The memo a validation of `label` (no previous snapshot) leaves, read back from disk."""
    memo = GateMemo(path)
    checked(dirs, label, None, memo)
    memo.save()
    return GateMemo.load(path)


@pytest.mark.parametrize(("label", "previous"), MEMO_CASES)
def test_the_gate_memo_answers_exactly_as_great_expectations(
    timeline: dict[str, Path], tmp_path: Path, label: str, previous: str | None
) -> None:
    by_gx = checked(timeline, label, previous)
    filling = GateMemo(tmp_path / "memo.json")
    assert_frame_equal(checked(timeline, label, previous, filling), by_gx)
    assert filling.hits == 0 and filling.misses > 0
    filling.save()

    remembered = GateMemo.load(tmp_path / "memo.json")
    assert_frame_equal(checked(timeline, label, previous, remembered), by_gx)
    assert remembered.misses == 0 and remembered.hits == filling.misses
    if label == "formula-error":  # failures too come back exactly (C1, C4 at the root)
        assert not by_gx["success"].all()


@pytest.mark.parametrize(("label", "previous"), [*MEMO_CASES, ("final", "duplicate-candidate")])
def test_the_gate_over_two_processes_answers_exactly_as_one(
    timeline: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, label: str, previous: str | None,
) -> None:
    """Suites checked by a forked second process (`CEC_GATE_PROCESSES`): their findings
    and what GX told them come back, in the order one process would give them."""
    monkeypatch.setattr(config, "GATE_PARALLEL_MIN_ROWS", 0)  # the okrugs' small ones too
    monkeypatch.setenv("CEC_GATE_PROCESSES", "1")
    alone = checked(timeline, label, previous)
    monkeypatch.setenv("CEC_GATE_PROCESSES", "2")
    filling = GateMemo(tmp_path / "memo.json")
    with caplog.at_level(logging.INFO, logger="etl.quality.gate"):
        assert_frame_equal(checked(timeline, label, previous, filling), alone)
    spread = re.search(r"(\d+) suites in 2 processes \((\d+) by the forked ones\)", caplog.text)
    assert spread is not None and 0 < int(spread[2]) < int(spread[1])
    if label == "formula-error":  # failures found by either process (C1, C4 at the root)
        assert not alone["success"].all()
    # What the second process learnt from GX is in the memo too: all of it is answered
    # from there next time, in one process or in two (counted from what it held before).
    filling.save()
    monkeypatch.setenv("CEC_GATE_PROCESSES", "1")
    one = GateMemo(tmp_path / "one.json")
    checked(timeline, label, previous, one)
    assert (filling.hits, filling.misses) == (one.hits, one.misses) == (0, one.misses)
    remembered = GateMemo.load(tmp_path / "memo.json")
    assert_frame_equal(checked(timeline, label, previous, remembered), alone)
    assert remembered.misses == 0 and remembered.hits == filling.misses
    monkeypatch.setenv("CEC_GATE_PROCESSES", "2")
    assert_frame_equal(checked(timeline, label, previous, remembered), alone)
    assert remembered.misses == 0 and remembered.hits == 2 * filling.misses


def test_failures_found_by_the_gate_helper_come_back(
    timeline: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gate's own process lingers on its first suite until its helper has taken all
    the others, C1's and C4's among them: their failure rows are in the gate's answer."""
    from etl.quality import gate

    monkeypatch.setattr(config, "GATE_PARALLEL_MIN_ROWS", 0)
    monkeypatch.setenv("CEC_GATE_PROCESSES", "1")
    alone = checked(timeline, "formula-error", None)
    assert set(alone.loc[~alone["success"] & alone["division_id"].notna(), "check_id"]) >= {
        "C1", "C4"}
    parent, lingered, taken = os.getpid(), [], tmp_path / "taken-by-the-helper"
    taken.touch()
    check_suite = gate._check_suite

    def lingering(*args: Any, **kwargs: Any) -> gate.SuiteFindings:
        if os.getpid() != parent:
            with taken.open("a") as file:
                file.write(f"{args[1]}\n")
        elif not lingered:
            lingered.append(args[1])
            others = len(gate.CURRENT_FRAMES) - 1  # no previous snapshot: no W2/W4 frames
            deadline = time.monotonic() + 120
            while len(taken.read_text().split()) < others and time.monotonic() < deadline:
                time.sleep(0.05)
        return check_suite(*args, **kwargs)

    monkeypatch.setattr(gate, "_check_suite", lingering)
    monkeypatch.setenv("CEC_GATE_PROCESSES", "2")
    with caplog.at_level(logging.INFO, logger="etl.quality.gate"):
        assert_frame_equal(checked(timeline, "formula-error", None), alone)
    spread = re.search(r"(\d+) suites in 2 processes \((\d+) by the forked ones\)", caplog.text)
    assert spread is not None and int(spread[2]) == int(spread[1]) - 1
    assert {"division_pct_sums", "results"} <= set(taken.read_text().split())  # C1's, C4's


def test_a_re_stamped_snapshot_is_answered_from_the_memo_under_its_new_id(
    timeline: dict[str, Path], tmp_path: Path
) -> None:
    remembered = memo_of(timeline, "formula-error", tmp_path / "memo.json")
    new_id = "jk2021-20211128T235900-000000000000"
    from_memo = checked(timeline, "formula-error", None, remembered, snapshot_id=new_id)
    assert remembered.misses == 0 and remembered.hits > 0
    assert_frame_equal(from_memo, checked(timeline, "formula-error", None, snapshot_id=new_id))
    assert set(from_memo["snapshot_id"]) == {new_id}


def test_one_changed_cell_is_validated_by_great_expectations_again(
    timeline: dict[str, Path], tmp_path: Path
) -> None:
    remembered = memo_of(timeline, "final", tmp_path / "memo.json")
    frames = read_snapshot_frames(timeline["final"])
    results = frames["results"].copy()
    row = results.index[(results["contest_id"] == "list") & (results["votes"] > 0)][0]
    results.loc[row, "votes"] += 1  # one vote more in one precinct: its sums no longer add up
    meta = read_snapshot_meta(timeline["final"])
    from_memo = run_checks(frames["divisions"], frames["turnout"], results, meta, None,
                           memo=remembered)
    assert remembered.misses > 0
    assert_frame_equal(from_memo, run_checks(frames["divisions"], frames["turnout"], results,
                                             meta, None))
    assert not from_memo["success"].all()


def test_a_snapshot_compared_with_itself_passes_w4_on_every_line(
    timeline: dict[str, Path]
) -> None:
    """Lines whose share did not move are left out of W4's frame, never out of its count."""
    dq = checked(timeline, "final", "final")
    w4 = dq[(dq["check_id"] == "W4") & dq["division_id"].isna()]
    assert len(w4) == len(read_snapshot_meta(timeline["final"])["contests"])
    assert w4["success"].all()
    frames = read_snapshot_frames(timeline["final"])
    roots = frames["divisions"].loc[frames["divisions"]["parent_id"].isna(),
                                    ["contest_id", "division_id"]]
    root_lines = frames["results"].merge(roots, on=["contest_id", "division_id"])
    for _, row in w4.iterrows():  # "W4 swings, list: passed on 22 root lines"
        lines = len(root_lines[root_lines["contest_id"] == row["contest_id"]])
        assert row["message"].endswith(f"passed on {lines} root lines"), row["message"]
