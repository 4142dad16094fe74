"""Silence is not success (issue 10, items 4-6): a renamed protocol row, a check that
checked nothing, a missing suite file and an incomplete dq_results all fail loudly."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from snapshot_factory import small_snapshot, write
from test_quality import check, hand_election

from etl import schema
from etl.parse import parse_division
from etl.quality import run_checks
from etl.quality.suites import EXPECTATIONS_DIR, SuiteError
from etl.warehouse import load_snapshot

PAGES = Path(__file__).parent / "fixtures" / "pages"


def summary(dq: pd.DataFrame, check_id: str, contest: str) -> pd.Series:
    rows = dq[(dq["check_id"] == check_id) & (dq["contest_id"] == contest)
              & dq["division_id"].isna()]
    assert len(rows) == 1
    return rows.iloc[0]


def test_a_renamed_protocols_processed_row_is_logged_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    html = (PAGES / "spec_example_ru.html").read_bytes()
    assert "Обработано протоколов УИК".encode() in html
    renamed = html.replace("Обработано протоколов УИК".encode(), "Итоги сверки УИК".encode())
    with caplog.at_level(logging.WARNING, logger="etl.parse"):
        page = parse_division(renamed, "http://portal/ru/results/jk2021/list/7/")
    assert page.protocol.precincts_counted is None and page.lines
    assert any("protocol row not recognised" in r.getMessage() and "Итоги сверки" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_divisions_with_results_but_no_protocols_counted_quarantine_the_contest() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    okrug = turnout["contest_id"] == "okrug-1"
    turnout.loc[okrug, ["precincts_counted", "precincts_total"]] = pd.NA
    dq = check(replace(snap, turnout=turnout))

    c2 = dq[(dq["check_id"] == "C2") & dq["division_id"].notna()]
    assert sorted(c2["division_id"]) == ["7101", "7102", "o1"]
    assert set(c2["contest_id"]) == {"okrug-1"}
    assert (c2["severity"] == "critical").all() and not c2["success"].any()
    assert all('"protocols processed"' in m for m in c2["message"])
    assert not summary(dq, "C2", "okrug-1")["success"]
    assert summary(dq, "C2", "list")["success"]


def test_a_protocol_table_with_no_known_row_fails_even_without_results() -> None:
    snap = hand_election()
    turnout = snap.turnout.copy()
    at_7102 = (turnout["contest_id"] == "list") & (turnout["division_id"] == "7102")
    figures = [c for c in schema.TURNOUT if c not in
               ("snapshot_id", "election_id", "contest_id", "division_id")]
    turnout.loc[at_7102, figures] = pd.NA
    results = snap.results[~((snap.results["contest_id"] == "list")
                             & (snap.results["division_id"] == "7102"))]
    dq = check(replace(snap, turnout=turnout, results=results))
    (row,) = dq[(dq["check_id"] == "C2") & (dq["division_id"] == "7102")].itertuples()
    assert "no protocol row was recognised" in row.message


def test_a_check_that_checked_nothing_where_rows_exist_fails() -> None:
    snap = hand_election()
    results = snap.results.assign(pct_published=pd.array([pd.NA] * len(snap.results),
                                                         dtype="Float64"))
    dq = check(replace(snap, results=results))
    c1 = summary(dq, "C1", "list")
    assert not c1["success"]
    assert c1["observed"] == "0 checked" and c1["expected"] == "6 divisions with votes"
    assert "nothing checked" in c1["message"]
    assert "passed on 0" not in " ".join(dq["message"])


def test_a_check_with_nothing_to_check_says_skipped_not_passed() -> None:
    dq = check(hand_election())  # no previous snapshot, nothing to compare
    for check_id in ("W2", "W4"):
        row = summary(dq, check_id, "list")
        assert row["success"] and row["observed"] == "skipped"
    assert not dq["message"].str.contains("passed on 0 ").any()


def test_a_missing_suite_file_is_an_error(tmp_path: Path) -> None:
    suites = tmp_path / "expectations"
    shutil.copytree(EXPECTATIONS_DIR, suites)
    (suites / "division_pct_sums.json").unlink()
    snap = hand_election()
    with pytest.raises(SuiteError, match=r"no suite file division_pct_sums\.json"):
        run_checks(snap.divisions, snap.turnout, snap.results, snap.meta, None,
                   expectations_dir=suites)


def test_publishing_holds_contests_whose_checks_did_not_all_run(tmp_path: Path) -> None:
    warehouse = f"duckdb:///{tmp_path / 'w.duckdb'}"
    snapshot = small_snapshot("s1")
    dq = snapshot.dq_results
    # okrug-2 lost its C3 result (a gate that died half-way); okrug-3 is complete.
    partial = replace(snapshot, dq_results=dq[~((dq["contest_id"] == "okrug-2")
                                                & (dq["check_id"] == "C3"))])
    summary_ = load_snapshot(warehouse, write(partial, tmp_path / "a"))
    statuses = {c.contest_id: (c.status, c.reason) for c in summary_.contests}
    assert statuses["okrug-3"] == ("published", None)
    status, reason = statuses["okrug-2"]
    assert status == "quarantined" and "no result for check(s) C3" in str(reason)


def test_an_empty_dq_results_publishes_nothing(tmp_path: Path) -> None:
    warehouse = f"duckdb:///{tmp_path / 'w.duckdb'}"
    snapshot = small_snapshot("s1")
    empty = replace(snapshot, dq_results=snapshot.dq_results.iloc[0:0])
    summary_ = load_snapshot(warehouse, write(empty, tmp_path / "a"))
    assert {c.status for c in summary_.contests} == {"quarantined"}
    assert all("quality gate incomplete" in str(c.reason) for c in summary_.contests)
