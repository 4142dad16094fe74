"""The gate's shortcuts find exactly what the full computation finds.

W2 leaves out of its frame the comparisons whose value did not change (they pass
`current >= previous` by construction) and counts them instead; the derived frames join on
integer codes instead of the string keys. Each test compares the shortcut with the full
computation on snapshots built to exercise it.
"""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic import SyntheticSnapshot, make_consistent_election
from test_quality import check, failures, hand_election, with_frames

from etl.quality import derive, gate
from etl.quality.suites import EXPECTATIONS_DIR, read_suite_specs

OPTIONS = {"regions": 2, "districts_per_region": 2, "precincts_per_district": 5, "okrugs": 3}


def _night(counted_now: float, counted_before: float) -> tuple[SyntheticSnapshot, SyntheticSnapshot]:
    now = make_consistent_election(7, counted_fraction=counted_now, **OPTIONS)
    before = make_consistent_election(7, counted_fraction=counted_before, snapshot_id="before",
                                      **OPTIONS)
    return now, before


def _annulled(snap: SyntheticSnapshot) -> SyntheticSnapshot:
    """A counted precinct's results vanish (annulled) and another's line goes down."""
    results = snap.results.copy()
    precinct = results.loc[results["division_id"].str.len() > 3, "division_id"].iloc[0]
    results = results[results["division_id"] != precinct].reset_index(drop=True)
    results.loc[5, "votes"] = results.at[5, "votes"] - 3
    return with_frames(snap, results=results)


def _numberless(snap: SyntheticSnapshot, suffix: str = "") -> SyntheticSnapshot:
    """Line 2 of the party list shown without its number (keyed by its name)."""
    results = snap.results.copy()
    line = (results["contest_id"] == "list") & (results["choice_position"] == 2).fillna(False)
    results.loc[line, "choice_position"] = pd.NA
    results.loc[line, "choice_name"] = results.loc[line, "choice_name"].str.upper() + suffix
    return with_frames(snap, results=results)


def _scenarios() -> dict[str, tuple[SyntheticSnapshot, SyntheticSnapshot]]:
    now, before = _night(1.0, 0.6)
    later, earlier = _night(0.6, 1.0)  # counts go backwards everywhere earlier was ahead
    same, restamped = _night(1.0, 1.0)
    return {
        "counting": (now, before),
        "backwards": (later, earlier),
        "restamp": (same, restamped),
        "annulled": (_annulled(now), before),
        "numberless line": (_numberless(_annulled(now)), _numberless(before)),
        "numberless renamed": (_numberless(now, " 2"), _numberless(before)),
    }


SCENARIOS = _scenarios()


def _full_comparisons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "_unchanged_values_pass", lambda spec: False)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_leaving_out_unchanged_comparisons_finds_the_same(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now, before = SCENARIOS[name]
    shortcut = check(now, previous=before)
    _full_comparisons(monkeypatch)
    full = check(now, previous=before)
    pd.testing.assert_frame_equal(shortcut, full)
    summary = shortcut[(shortcut["check_id"] == "W2") & shortcut["division_id"].isna()
                       & (shortcut["contest_id"] == "list")].iloc[0]
    assert summary["observed"] != "skipped"  # the comparisons were made and counted


def test_the_scenarios_exercise_w2() -> None:
    """Guard for the test above: some scenarios have decreases, one has none at all."""
    found = {name: len(failures(check(now, previous=before), "W2"))
             for name, (now, before) in SCENARIOS.items()}
    assert found["restamp"] == 0 and found["counting"] == 0
    assert found["backwards"] > 10 and found["annulled"] > 5
    assert found["numberless line"] > found["annulled"] - 2


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_revisions_frame_is_the_full_frame_without_unchanged_rows(name: str) -> None:
    now, before = SCENARIOS[name]
    keyed = derive.with_keys(
        *(gate._conform(f, c, w, None) for f, c, w in (
            (now.divisions, gate.schema.DIVISIONS, "divisions"),
            (now.turnout, gate.schema.TURNOUT, "turnout"),
            (now.results, gate.schema.RESULTS, "results"))),
        derive.PreviousSnapshot(
            gate._conform(before.turnout, gate.schema.TURNOUT, "t", None),
            gate._conform(before.results, gate.schema.RESULTS, "r", None)),
    )
    assert keyed.previous is not None
    results = derive.keyed_results(keyed.results, keyed.turnout)
    pruned = derive.revisions(keyed.turnout, results, keyed.previous)
    full = derive.revisions(keyed.turnout, results, keyed.previous, leave_out_unchanged=False)
    assert pruned.compared == full.compared
    assert pruned.compared == full.frame["contest_id"].value_counts().to_dict()
    changed = full.frame[full.frame["current"] != full.frame["previous"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(pruned.frame, changed)
    if name == "restamp":
        assert pruned.frame.empty and sum(full.compared.values()) > 100


def test_a_restamp_still_reports_w2_as_checked_not_skipped() -> None:
    now, before = SCENARIOS["restamp"]
    dq = check(now, previous=before)
    summaries = dq[(dq["check_id"] == "W2") & dq["division_id"].isna()]
    assert summaries["success"].all()
    assert not (summaries["observed"] == "skipped").any()
    assert summaries["message"].str.contains("passed on ").all()


def test_only_the_shipped_w2_rule_lets_unchanged_values_be_left_out() -> None:
    spec = read_suite_specs(EXPECTATIONS_DIR)["revisions"]
    assert gate._unchanged_values_pass(spec)
    strict = {**spec.body, "expectations": [
        {**e, "kwargs": {**e["kwargs"], "or_equal": False}} for e in spec.body["expectations"]]}
    assert not gate._unchanged_values_pass(type(spec)(spec.name, spec.path, strict))
    assert not gate._unchanged_values_pass(None)


def test_name_keyed_lines_compare_across_snapshots_by_normalised_name() -> None:
    """A numberless line is the same line when only case differs, another when renamed."""
    snap = hand_election()
    before = hand_election("hand-0")
    line = (before.results["contest_id"] == "list") & (before.results["choice_position"] == 1)
    before_results = before.results.copy()
    before_results.loc[line, "votes"] = before_results.loc[line, "votes"] + 7

    def numberless(results: pd.DataFrame, upper: bool) -> pd.DataFrame:
        results = results.copy()
        mask = (results["contest_id"] == "list") & (results["choice_position"] == 1).fillna(False)
        results.loc[mask, "choice_position"] = pd.NA
        if upper:
            results.loc[mask, "choice_name"] = results.loc[mask, "choice_name"].str.upper()
        return results

    previous = with_frames(before, results=numberless(before_results, upper=False))
    same = check(with_frames(snap, results=numberless(snap.results, upper=True)), previous)
    w2 = failures(same, "W2")
    assert len(w2) == (line.sum()) and w2["choice_position"].isna().all()
    assert w2["message"].str.contains(r"\(-7\)").all()
