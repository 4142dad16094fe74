"""The data-quality gate on hand-made frames, synthetic elections and through its CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import (
    CORRUPTIONS,
    SyntheticSnapshot,
    corrupt,
    make_consistent_election,
)

from etl import schema
from etl.quality import CHECKS, QualityConfig, run_checks, validate_snapshot
from etl.quality.catalog import CHECKS_BY_ID
from etl.quality.cli import main_validate
from etl.quality.findings import formatter_for
from etl.quality.suites import EXPECTATIONS_DIR, deferred_imports, read_suite_specs

SNAPSHOT = "hand-1"
PREVIOUS = "hand-0"

# --- a hand-made election -----------------------------------------------------------
# list: Кыргызская Республика (0) → г. Бишкек (1) → УИК №1001
#                                 → Чуйская область (7) → УИК №7101, УИК №7102
# okrug-1: Округ №1 (o1) → УИК №7101, УИК №7102, won by "against all".
PARTIES = [(1, "«Ата-Мекен»"), (2, "«Бүтүн Кыргызстан»"), (3, "«Альянс»")]
CANDIDATES = [(1, "Асанов Асан"), (2, "Үсөнов Үсөн")]
# division: (registered, issued, cast, invalid), then votes per line, against all last
PRECINCTS = {
    "list": {
        "1001": ((500, 200, 200, 40), (40, 50, 60, 10)),
        "7101": ((1000, 400, 398, 30), (200, 100, 50, 18)),
        "7102": ((800, 300, 300, 20), (100, 120, 40, 20)),
    },
    "okrug-1": {
        "7101": ((1000, 400, 398, 30), (100, 90, 178)),
        "7102": ((800, 300, 300, 20), (80, 70, 130)),
    },
}
TREES = {
    "list": {
        "0": (None, "country", "Кыргызская Республика"),
        "1": ("0", "region", "г. Бишкек"),
        "7": ("0", "region", "Чуйская область"),
        "1001": ("1", "precinct", "УИК №1001"),
        "7101": ("7", "precinct", "УИК №7101"),
        "7102": ("7", "precinct", "УИК №7102"),
    },
    "okrug-1": {
        "o1": (None, "constituency", "Округ №1"),
        "7101": ("o1", "precinct", "УИК №7101"),
        "7102": ("o1", "precinct", "УИК №7102"),
    },
}


def _children(tree: dict[str, tuple[str | None, str, str]], division: str) -> list[str]:
    return [d for d, (parent, _, _) in tree.items() if parent == division]


def _figures(contest: str, division: str) -> tuple[list[int], list[int]]:
    """A division's protocol and votes: a precinct's own, or the sum of its children."""
    if division in PRECINCTS[contest]:
        protocol, votes = PRECINCTS[contest][division]
        return list(protocol), list(votes)
    parts = [_figures(contest, child) for child in _children(TREES[contest], division)]
    protocol = [sum(p[0][i] for p in parts) for i in range(4)]
    votes = [sum(p[1][i] for p in parts) for i in range(len(parts[0][1]))]
    return protocol, votes


def hand_election(snapshot_id: str = SNAPSHOT) -> SyntheticSnapshot:
    """The hand-made election above, every figure consistent."""
    divisions, turnout, results = [], [], []
    base = {"snapshot_id": snapshot_id, "election_id": "jk2021"}
    for contest, tree in TREES.items():
        lines = [*(PARTIES if contest == "list" else CANDIDATES), (None, "Против всех")]
        for division, (parent, level, name) in tree.items():
            key = {**base, "contest_id": contest, "division_id": division}
            divisions.append({**key, "parent_id": parent, "level": level, "name": name})
            (registered, issued, cast, invalid), votes = _figures(contest, division)
            n_precincts = sum(
                1 for d in PRECINCTS[contest] if division in (d, *_ancestors(tree, d))
            )
            turnout.append({
                **key, "registered": registered, "ballots_issued": issued, "ballots_cast": cast,
                "invalid": invalid, "valid": cast - invalid, "precincts_counted": n_precincts,
                "precincts_total": n_precincts,
                "turnout_pct_published": round(cast / registered * 100, 2),
            })
            for (position, choice), count in zip(lines, votes, strict=True):
                results.append({
                    **key, "choice_position": position, "choice_name": choice,
                    "is_against_all": position is None, "votes": count,
                    "pct_published": round(count / cast * 100, 2),
                    "pct_computed": count / cast * 100,
                })
    meta = {
        "snapshot_id": snapshot_id, "election_id": "jk2021", "contests": list(TREES),
        "portal_updated_at": "2021-11-28T21:31:27+06:00",
        "fetched_at": "2021-11-28T15:32:00+00:00", "pages_fetched": 9,
        "pages_not_modified": 0, "pages_failed": 0, "failures": [], "pages": [],
    }
    return SyntheticSnapshot(
        divisions=schema.typed_frame(divisions, schema.DIVISIONS),
        turnout=schema.typed_frame(turnout, schema.TURNOUT),
        results=schema.typed_frame(results, schema.RESULTS),
        meta=meta,
    )


def _ancestors(tree: dict[str, tuple[str | None, str, str]], division: str) -> list[str]:
    chain, parent = [], tree[division][0]
    while parent is not None:
        chain.append(parent)
        parent = tree[parent][0]
    return chain


def check(
    snap: SyntheticSnapshot,
    previous: SyntheticSnapshot | None = None,
    quality_config: QualityConfig | None = None,
) -> pd.DataFrame:
    """Run the gate on a snapshot (and a previous one)."""
    before = (previous.turnout, previous.results) if previous is not None else None
    return run_checks(
        snap.divisions, snap.turnout, snap.results, snap.meta, before,
        quality_config=quality_config,
    )


def failures(dq: pd.DataFrame, check_id: str | None = None) -> pd.DataFrame:
    """Failure rows (not summaries), optionally of one check."""
    rows = dq[dq["division_id"].notna()]
    return rows if check_id is None else rows[rows["check_id"] == check_id]


def at(results: pd.DataFrame, contest: str, division: str, position: int | None) -> pd.Series:
    """Mask of one results row (position None: against all)."""
    mask = (results["contest_id"] == contest) & (results["division_id"] == division)
    if position is None:
        return mask & results["is_against_all"]
    return mask & (results["choice_position"] == position).fillna(False)


def turnout_at(turnout: pd.DataFrame, contest: str, division: str) -> pd.Series:
    """Mask of one turnout row."""
    return (turnout["contest_id"] == contest) & (turnout["division_id"] == division)


def with_frames(snap: SyntheticSnapshot, **frames: pd.DataFrame) -> SyntheticSnapshot:
    """A copy of `snap` with some frames replaced."""
    return SyntheticSnapshot(
        divisions=frames.get("divisions", snap.divisions),
        turnout=frames.get("turnout", snap.turnout),
        results=frames.get("results", snap.results),
        meta=frames.get("meta", snap.meta),  # type: ignore[arg-type]
    )


def only_failure(dq: pd.DataFrame, check_id: str) -> pd.Series:
    """The single failure row of `check_id` (asserting there is exactly one)."""
    rows = failures(dq, check_id)
    assert len(rows) == 1, rows[["check_id", "division_id", "message"]].to_string()
    return rows.iloc[0]


# --- the suites and the catalog --------------------------------------------------------


def test_every_suite_expectation_names_a_check_with_its_severity_and_a_formatter() -> None:
    specs = read_suite_specs(EXPECTATIONS_DIR)
    seen = set()
    for spec in specs.values():
        for expectation in spec.body["expectations"]:
            check_id = expectation["meta"]["check_id"]
            assert expectation["severity"] == CHECKS_BY_ID[check_id].severity
            formatter_for(expectation["meta"]["rule"])  # raises when a rule has no message
            seen.add(check_id)
    assert seen == {c.check_id for c in CHECKS}


def test_readme_table_lists_every_check() -> None:
    readme = (Path(__file__).resolve().parent.parent / "etl/quality/README.md").read_text()
    for c in CHECKS:
        assert f"| {c.check_id} | {c.severity} |" in readme


# --- precision: consistent elections raise nothing --------------------------------------


def test_hand_made_consistent_election_passes_every_check() -> None:
    snap = hand_election()
    dq = check(snap, previous=hand_election(PREVIOUS))
    assert failures(dq).empty
    assert dq["success"].all()


def test_output_follows_the_contract() -> None:
    dq = check(hand_election())
    assert list(dq.columns) == list(schema.DQ_RESULTS)
    assert dq.dtypes.astype(str).to_dict() == schema.DQ_RESULTS
    assert dq["success"].notna().all()
    summaries = dq[dq["division_id"].isna()]
    # one summary row per (check, contest)
    assert len(summaries) == len(CHECKS) * len(TREES)
    assert not summaries.duplicated(["check_id", "contest_id"]).any()
    assert set(dq["severity"]) == {"critical", "warning"}
    skipped = summaries[summaries["check_id"].isin(["W2", "W4"])]
    assert (skipped["observed"] == "skipped").all() and skipped["success"].all()


def test_86_96_percent_page_is_not_an_error() -> None:
    """The preliminary national page of 28 November 2021: parties 86.96%, with against all
    89.13%, the rest invalid ballots. Correct, and must raise nothing."""
    published = [3.48, 6.74, 8.23, 0.62, 6.01, 0.62, 0.95, 10.81, 13.50, 4.01, 1.54, 0.41,
                 0.44, 3.21, 0.46, 0.96, 2.48, 4.46, 0.46, 0.71, 16.86]
    cast = 1_182_291
    votes = [round(p / 100 * cast) for p in published]
    against_all = round(2.17 / 100 * cast)
    invalid = cast - sum(votes) - against_all
    key = {"snapshot_id": "prelim", "election_id": "jk2021", "contest_id": "list",
           "division_id": "0"}
    divisions = schema.typed_frame(
        [{**key, "parent_id": None, "level": "country", "name": "Кыргызская Республика"}],
        schema.DIVISIONS,
    )
    turnout = schema.typed_frame([{
        **key, "registered": 3_703_420, "ballots_issued": 1_182_600, "ballots_cast": cast,
        "invalid": invalid, "valid": cast - invalid, "precincts_counted": 2247,
        "precincts_total": 2494, "turnout_pct_published": 31.92,
    }], schema.TURNOUT)
    rows = [
        {**key, "choice_position": i + 1, "choice_name": f"Партия {i + 1}",
         "is_against_all": False, "votes": v, "pct_published": round(v / cast * 100, 2),
         "pct_computed": v / cast * 100}
        for i, v in enumerate(votes)
    ]
    rows.append({**key, "choice_position": None, "choice_name": "Против всех",
                 "is_against_all": True, "votes": against_all, "pct_published": 2.17,
                 "pct_computed": against_all / cast * 100})
    results = schema.typed_frame(rows, schema.RESULTS)
    parties = results.loc[~results["is_against_all"], "pct_published"].sum()
    assert round(float(parties), 2) == 86.96
    meta = {"snapshot_id": "prelim", "election_id": "jk2021", "contests": ["list"],
            "failures": []}
    dq = run_checks(divisions, turnout, results, meta, None)
    assert failures(dq).empty, failures(dq)["message"].tolist()


def test_against_all_winning_a_constituency_is_not_an_error() -> None:
    snap = hand_election()
    okrug = snap.results[
        (snap.results["contest_id"] == "okrug-1") & (snap.results["division_id"] == "o1")
    ]
    winner = okrug.loc[okrug["votes"].idxmax()]
    assert bool(winner["is_against_all"])
    assert failures(check(snap)).empty


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_night_with_previous_snapshot_raises_nothing(seed: int) -> None:
    options = {"okrugs": 3, "against_all_wins": seed == 1, "invalid_share": 0.05 + seed / 20}
    earlier = make_consistent_election(seed, counted_fraction=0.4, **options)
    later = make_consistent_election(seed, counted_fraction=0.9, **options)
    dq = check(later, previous=earlier)
    assert failures(dq).empty, failures(dq)["message"].head().tolist()


# --- recall: each check fires and names the place ---------------------------------------


def test_doubled_percentage_is_named_even_when_the_sum_stays_below_100() -> None:
    snap = hand_election()
    results = snap.results.copy()
    # УИК №1001 has many invalid ballots: its lines sum to 80%; doubling against all
    # (5% -> 10%) keeps the sum at 85%.
    results.loc[at(results, "list", "1001", None), "pct_published"] = 10.0
    dq = check(with_frames(snap, results=results))
    assert failures(dq, "C1").empty
    row = only_failure(dq, "C4")
    assert (row["contest_id"], row["division_id"]) == ("list", "1001")
    assert row["choice_position"] is pd.NA
    assert (row["observed"], row["expected"]) == ("10.00", "5.00")
    assert row["message"].startswith("УИК №1001 (1001), list, against all: published 10.00%")
    assert "2.00× the formula" in row["message"]


def test_percentages_summing_to_143_fail_c1_with_the_division_name() -> None:
    snap = hand_election()
    results = snap.results.copy()
    published = {1: 71.00, 2: 40.00, 3: 20.00, None: 12.27}  # 143.27
    for position, value in published.items():
        results.loc[at(results, "list", "7", position), "pct_published"] = value
    dq = check(with_frames(snap, results=results))
    row = only_failure(dq, "C1")
    assert (row["contest_id"], row["division_id"]) == ("list", "7")
    assert (row["observed"], row["expected"]) == ("143.27", "<= 100.00")
    assert row["message"].startswith(
        "Чуйская область (7), list: published percentages of its 4 lines sum to 143.27%, "
        "at most 100% expected"
    )
    assert set(failures(dq, "C4")["division_id"]) == {"7"}
    summary = dq[(dq["check_id"] == "C1") & dq["division_id"].isna()].set_index("contest_id")
    assert not summary.at["list", "success"] and summary.at["list", "observed"] == "1"
    assert summary.at["okrug-1", "success"]


@pytest.mark.parametrize(("last", "fails"), [(25.00, False), (25.02, True)])
def test_c1_allows_rounding_of_001_per_line(last: float, fails: bool) -> None:
    snap = hand_election()
    results = snap.results.copy()
    # 4 lines: the limit is 100.04; 100.03 passes, 100.05 fails
    for position, value in {1: 25.01, 2: 25.01, 3: 25.01, None: last}.items():
        results.loc[at(results, "list", "7", position), "pct_published"] = value
    dq = check(with_frames(snap, results=results))
    assert len(failures(dq, "C1")) == int(fails)


def test_missing_row_is_a_missing_share() -> None:
    snap = hand_election()
    results = snap.results[~at(snap.results, "list", "7102", 2)]
    dq = check(with_frames(snap, results=results))
    row = only_failure(dq, "C2")
    assert (row["division_id"], row["choice_position"], row["observed"]) == ("7102", 2, "missing")
    assert row["message"].startswith("УИК №7102 (7102), list, line 2 «Бүтүн Кыргызстан»: no row")
    # the missing share is reported once, not also as a broken identity
    assert failures(dq, "C3").empty
    assert dq.loc[dq["severity"] == "critical", "contest_id"].isin(["list", "okrug-1"]).all()


@pytest.mark.parametrize(
    ("column", "observed"), [("votes", "votes missing"), ("pct_published", "percentage missing")]
)
def test_empty_cell_is_a_missing_share(column: str, observed: str) -> None:
    snap = hand_election()
    results = snap.results.copy()
    results.loc[at(results, "okrug-1", "7101", 1), column] = pd.NA
    dq = check(with_frames(snap, results=results))
    row = only_failure(dq, "C2")
    assert (row["contest_id"], row["division_id"], row["choice_position"]) == ("okrug-1", "7101", 1)
    assert row["observed"] == observed
    assert "«Асанов Асан»" in row["message"]


def test_uncounted_division_without_results_is_fine() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    mask = turnout_at(turnout, "okrug-1", "7102")
    turnout.loc[mask, ["ballots_issued", "ballots_cast", "invalid", "valid"]] = 0
    turnout.loc[mask, "precincts_counted"] = 0
    results = snap.results[
        ~((snap.results["contest_id"] == "okrug-1") & (snap.results["division_id"] == "7102"))
    ]
    dq = check(with_frames(snap, results=results, turnout=turnout))
    assert failures(dq).query("severity == 'critical'").empty


def test_broken_identity_fails_c3_exactly() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    turnout.loc[turnout_at(turnout, "list", "7101"), "invalid"] = 31
    dq = check(with_frames(snap, turnout=turnout))
    rows = failures(dq, "C3")
    assert set(rows["division_id"]) == {"7101"}
    assert len(rows) == 2
    messages = " ".join(rows["message"])
    assert "368 + invalid 31 = 399, but ballots cast = 398 (difference +1)" in messages
    assert "valid 368 + invalid 31 = 399" in messages


def test_negative_count_fails_c5() -> None:
    snap = hand_election()
    results = snap.results.copy()
    results.loc[at(results, "list", "7102", 3), "votes"] = -40
    dq = check(with_frames(snap, results=results))
    rows = failures(dq, "C5")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["division_id"], row["choice_position"], row["observed"]) == ("7102", 3, "-40")
    assert "votes is -40: a count cannot be negative" in row["message"]


def test_ballots_cast_over_issued_fails_c5() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    turnout.loc[turnout_at(turnout, "list", "7102"), "ballots_issued"] = 299
    dq = check(with_frames(snap, turnout=turnout))
    row = only_failure(dq, "C5")
    assert (row["division_id"], row["observed"], row["expected"]) == ("7102", "300", "<= 299")
    assert row["message"] == "УИК №7102 (7102), list: ballots cast 300 exceed ballots issued 299"
    # the parent no longer adds up: a warning, not a second critical
    assert set(failures(dq, "W1")["division_id"]) == {"7"}


def test_turnout_over_100_and_counted_over_total_fail_c5() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    turnout.loc[turnout_at(turnout, "list", "1"), "turnout_pct_published"] = 140.0
    turnout.loc[turnout_at(turnout, "list", "1001"), "precincts_counted"] = 2
    dq = check(with_frames(snap, turnout=turnout))
    rows = failures(dq, "C5").set_index("division_id")
    assert rows.at["1", "observed"] == "140.00"
    assert rows.at["1001", "expected"] == "<= 1"


def test_duplicate_candidate_fails_c6() -> None:
    snap = hand_election()
    results = snap.results.copy()
    same_number = results[at(results, "okrug-1", "7101", 2)]
    other_number = results[at(results, "okrug-1", "7102", 1)].assign(choice_position=7)
    results = pd.concat([results, same_number, other_number], ignore_index=True)
    dq = check(with_frames(snap, results=results))
    rows = failures(dq, "C6")
    assert set(zip(rows["division_id"], rows["choice_position"], strict=True)) == {
        ("7101", 2), ("7102", 1), ("7102", 7)
    }
    assert len(rows[rows["division_id"] == "7101"]) == 2  # both copies named
    moved = rows[rows["division_id"] == "7102"].iloc[0]["message"]
    assert "appears 2 times in this division's table (positions 1, 7)" in moved


def test_parent_not_equal_to_children_warns_w1() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    turnout.loc[turnout_at(turnout, "list", "7"), "registered"] = 1801
    dq = check(with_frames(snap, turnout=turnout))
    # level by level: the region against its precincts, the country against its regions
    rows = failures(dq, "W1").set_index("division_id")
    assert set(rows.index) == {"7", "0"}
    assert (rows["severity"] == "warning").all()
    assert (rows.at["7", "observed"], rows.at["7", "expected"]) == ("1801", "1800")
    assert rows.at["7", "message"] == (
        "Чуйская область (7), list: registered voters 1801, but its 2 subdivisions "
        "(all counted) sum to 1800 (difference +1)"
    )
    assert (rows.at["0", "observed"], rows.at["0", "expected"]) == ("2300", "2301")
    assert failures(dq).query("severity == 'critical'").empty


def test_revision_down_warns_w2_with_size_and_place() -> None:
    before = hand_election(PREVIOUS)
    results = before.results.copy()
    results.loc[at(results, "list", "7101", 1), "votes"] = 210
    dq = check(hand_election(), previous=with_frames(before, results=results))
    row = only_failure(dq, "W2")
    assert (row["division_id"], row["choice_position"]) == ("7101", 1)
    assert (row["observed"], row["expected"]) == ("200", ">= 210")
    assert "votes went down from 210 to 200 (-10) since the previous snapshot hand-0" in row[
        "message"
    ]


def test_annulled_precinct_results_vanishing_warn_w2() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    mask = turnout_at(turnout, "okrug-1", "7102")
    turnout.loc[mask, ["ballots_issued", "ballots_cast", "invalid", "valid", "precincts_counted"]] = 0
    results = snap.results[~((snap.results["contest_id"] == "okrug-1")
                             & (snap.results["division_id"] == "7102"))]
    dq = check(with_frames(snap, turnout=turnout, results=results), previous=hand_election(PREVIOUS))
    rows = failures(dq, "W2")
    at_precinct = rows[rows["division_id"] == "7102"]
    assert len(at_precinct) == 5  # ballots cast, protocols counted and three lines
    assert "votes went down from 130 to 0 (-130)" in " ".join(at_precinct["message"])


def test_swing_with_few_protocols_added_warns_w4() -> None:
    before = hand_election(PREVIOUS)
    results = before.results.copy()
    # 90 of 898 votes moved from line 1 to line 2 at the root: 10.02 pp, no protocol added
    results.loc[at(results, "list", "0", 1), "votes"] = 250
    results.loc[at(results, "list", "0", 2), "votes"] = 360
    dq = check(hand_election(), previous=with_frames(before, results=results))
    rows = failures(dq, "W4").set_index("choice_position")
    assert set(rows.index) == {1, 2}
    assert (rows["division_id"] == "0").all()
    assert (rows.at[1, "observed"], rows.at[1, "expected"]) == ("37.86", "27.84 ± 2.00")
    assert rows.at[1, "message"] == (
        "Кыргызская Республика (0), list, line 1 «Ата-Мекен»: national share moved from "
        "27.84% to 37.86% (+10.02 pp) while protocols counted went from 3 to 3 of 3 (+0.00 pp)"
    )
    # a threshold above the move keeps it quiet
    quiet = check(hand_election(), previous=with_frames(before, results=results),
                  quality_config=QualityConfig(swing_max_pp=10.5))
    assert failures(quiet, "W4").empty


def test_page_failures_and_missing_contest_warn_w3() -> None:
    snap = hand_election()
    gone = lambda frame: frame[~((frame["contest_id"] == "list") & (frame["division_id"] == "7102"))]  # noqa: E731
    meta = {
        **snap.meta,
        "contests": [*snap.meta["contests"], "okrug-2"],
        "pages_failed": 1,
        "failures": [{"url": "http://127.0.0.1:8765/ru/results/jk2021/list/7102/",
                      "reason": "HTTP 503 after 4 retries", "status": 503, "contest_id": "list"}],
    }
    broken = with_frames(snap, divisions=gone(snap.divisions), turnout=gone(snap.turnout),
                         results=gone(snap.results), meta=meta)  # type: ignore[arg-type]
    dq = check(broken, previous=hand_election(PREVIOUS))
    rows = failures(dq, "W3").set_index(["contest_id", "division_id"])
    failed = rows.loc[("list", "7102")]
    assert failed["observed"] == "page_failed (503)"
    assert "HTTP 503 after 4 retries" in failed["message"]
    assert rows.loc[("okrug-2", "(contest)"), "observed"] == "contest_missing"
    # the failed page makes parents unsummable: W1 is skipped there, not raised
    assert failures(dq, "W1").empty
    w1 = dq[(dq["check_id"] == "W1") & dq["division_id"].isna()].set_index("contest_id")
    assert w1.at["list", "observed"] == "skipped"
    assert failures(dq).query("severity == 'critical'").empty


def test_division_gone_since_previous_snapshot_warns_w3() -> None:
    snap = hand_election()
    keep = lambda frame: frame[~((frame["contest_id"] == "okrug-1") & (frame["division_id"] == "7102"))]  # noqa: E731
    dq = check(with_frames(snap, divisions=keep(snap.divisions), turnout=keep(snap.turnout),
                           results=keep(snap.results)), previous=hand_election(PREVIOUS))
    rows = failures(dq, "W3")
    assert list(rows["division_id"]) == ["7102"]
    assert rows.iloc[0]["observed"] == "disappeared"


def test_frames_of_another_snapshot_are_refused() -> None:
    snap = hand_election()
    turnout = snap.turnout.assign(snapshot_id="other")
    with pytest.raises(ValueError, match="other"):
        check(with_frames(snap, turnout=turnout))


# --- properties ---------------------------------------------------------------------------

elections = st.builds(
    dict,
    seed=st.integers(0, 10_000),
    n_lines=st.integers(1, 25),
    regions=st.integers(1, 3),
    districts_per_region=st.integers(1, 3),
    precincts_per_district=st.integers(1, 4),
    okrugs=st.integers(0, 3),
    candidates_per_okrug=st.integers(1, 8),
    counted_fraction=st.sampled_from([0.0, 0.3, 0.75, 1.0]),
    invalid_share=st.floats(0.0, 0.4),
    against_all_wins=st.booleans(),
)
PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(options=elections)
def test_consistent_elections_never_fail_a_critical_check(options: dict) -> None:
    snap = make_consistent_election(**options)
    earlier = make_consistent_election(**{**options, "counted_fraction": options["counted_fraction"] / 2})
    dq = check(snap, previous=earlier)
    assert failures(dq).empty, failures(dq)["message"].head().tolist()


@PROPERTY_SETTINGS
@given(options=elections, kind=st.sampled_from(CORRUPTIONS), where=st.integers(0, 10_000))
def test_one_corruption_fails_its_check_at_its_place(options: dict, kind: str, where: int) -> None:
    snap = make_consistent_election(**{**options, "counted_fraction": 1.0})
    broken, corruption = corrupt(snap, kind, where)
    dq = check(broken)
    rows = failures(dq, corruption.check_id)
    rows = rows[(rows["contest_id"] == corruption.contest_id)
                & (rows["division_id"] == corruption.division_id)]
    assert not rows.empty, (corruption, failures(dq)["message"].head().tolist())
    if corruption.choice_position is not None:
        assert corruption.choice_position in set(rows["choice_position"].dropna())
    assert corruption.contest_id in set(
        dq.loc[(dq["severity"] == "critical") & ~dq["success"], "contest_id"]
    )


# --- the CLI ------------------------------------------------------------------------------


def test_cli_exit_0_on_a_clean_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snapshot_dir = hand_election().write(tmp_path / "clean")
    previous_dir = hand_election(PREVIOUS).write(tmp_path / "previous")
    reports = tmp_path / "reports"
    code = main_validate([str(snapshot_dir), "--previous", str(previous_dir),
                          "--report-dir", str(reports)])
    assert code == 0
    dq = pd.read_parquet(snapshot_dir / "dq_results.parquet")
    assert list(dq.columns) == list(schema.DQ_RESULTS)
    assert dq["success"].all()
    report = reports / f"{SNAPSHOT}.html"
    assert "Data quality of snapshot hand-1" in report.read_text(encoding="utf-8")
    assert "0 critical and 0 warning failures" in capsys.readouterr().out


def test_cli_exit_3_on_a_critical_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = hand_election()
    results = snap.results.copy()
    results.loc[at(results, "list", "7", 1), "pct_published"] = 100.0
    snapshot_dir = with_frames(snap, results=results).write(tmp_path / "broken")
    code = main_validate([str(snapshot_dir), "--report-dir", str(tmp_path / "reports")])
    assert code == 3
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("CRITICAL C1") and "Чуйская область (7), list" in first
    assert "quarantined contests: list" in out
    report = (tmp_path / "reports" / f"{SNAPSHOT}.html").read_text(encoding="utf-8")
    assert "Чуйская область (7), list: published percentages" in report


def test_cli_prints_at_most_50_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = make_consistent_election(3, regions=3, districts_per_region=3, precincts_per_district=4)
    results = snap.results.assign(pct_published=snap.results["pct_published"] * 2)
    snapshot_dir = with_frames(snap, results=results).write(tmp_path / "doubled")
    assert main_validate([str(snapshot_dir), "--report-dir", str(tmp_path / "r")]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("CRITICAL") for line in lines) == 50
    assert any(line.startswith("… ") and "more failures" in line for line in lines)


def test_cli_exit_1_on_a_bad_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_validate([str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    half = tmp_path / "half"
    half.mkdir()
    (half / "divisions.parquet").write_bytes(b"")
    assert main_validate([str(half)]) == 1
    assert "snapshot.json missing" in capsys.readouterr().err
    snapshot_dir = hand_election().write(tmp_path / "no-results")
    (snapshot_dir / "results.parquet").unlink()
    assert main_validate([str(snapshot_dir)]) == 1
    assert "results.parquet missing" in capsys.readouterr().err


def test_validate_snapshot_writes_results_and_report(tmp_path: Path, isolated_data_dir: Path) -> None:
    snapshot_dir = hand_election().write(tmp_path / "snap")
    outcome = validate_snapshot(snapshot_dir)
    assert outcome.critical_contests == frozenset()
    assert outcome.report_path == isolated_data_dir / "reports" / f"{SNAPSHOT}.html"
    written = pd.read_parquet(snapshot_dir / "dq_results.parquet")
    assert len(written) == len(outcome.dq_results)
    assert json.loads((snapshot_dir / "snapshot.json").read_text())["snapshot_id"] == SNAPSHOT


@PROPERTY_SETTINGS
@given(options=elections, where=st.integers(0, 10_000), drop=st.integers(1, 500))
def test_any_figure_that_went_down_is_named_by_w2(options: dict, where: int, drop: int) -> None:
    snap = make_consistent_election(**{**options, "counted_fraction": 1.0})
    before = make_consistent_election(**{**options, "counted_fraction": 1.0, "snapshot_id": "before"})
    results = before.results.copy()
    row = where % len(results)
    results.loc[row, "votes"] = results.at[row, "votes"] + drop  # it had more before
    dq = check(snap, previous=with_frames(before, results=results))
    named = failures(dq, "W2")
    place = results.loc[row]
    hit = named[(named["contest_id"] == place["contest_id"])
                & (named["division_id"] == place["division_id"])]
    assert len(hit) == 1
    assert hit.iloc[0]["observed"] == str(place["votes"] - drop)
    assert failures(dq).query("severity == 'critical'").empty


def test_line_dropped_by_the_root_is_found_through_its_divisions() -> None:
    snap = hand_election()
    results = snap.results[~at(snap.results, "list", "0", 3)]
    dq = check(with_frames(snap, results=results))
    row = only_failure(dq, "C2")
    assert (row["division_id"], row["choice_position"], row["observed"]) == ("0", 3, "missing")
    assert row["message"].endswith(
        "a missing share (listed by 5 divisions of the contest, not by its root)"
    )


def test_deferred_imports_run_a_module_only_when_it_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # How the gate imports Great Expectations without running scipy and altair (which GX
    # imports for expectations and renderers the gate does not use) until they are used.
    package = tmp_path / "deferred_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import sys\nsys.modules['builtins'].RAN.append('pkg')\n"
                                         "ANSWER = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins.RAN", [], raising=False)
    import builtins

    with deferred_imports(("deferred_pkg",)):
        import deferred_pkg  # type: ignore[import-not-found]
    assert builtins.RAN == []  # type: ignore[attr-defined]
    assert deferred_pkg.ANSWER == 42
    assert builtins.RAN == ["pkg"]  # type: ignore[attr-defined]
    monkeypatch.delitem(sys.modules, "deferred_pkg")
    assert not any(type(f).__name__ == "_DeferringFinder" for f in sys.meta_path)  # removed
