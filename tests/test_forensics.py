"""Forensic signals: false-positive rate on clean synthetic elections, recall on injected fraud.

Figures (README, "Forensic signals") are what these tests measure: each prints them.
"""

from __future__ import annotations

import numpy as np
import pytest
from forensic_elections import clean_election, round_counts, round_percentages, stuff_ballots

from etl.report import forensics
from etl.report.forensics import PrecinctCounts

CLEAN_ELECTIONS = 200
INJECTED_ELECTIONS = 100
MAX_FALSE_POSITIVE_RATE = 0.01
MIN_RECALL = 0.90


@pytest.fixture(scope="module")
def clean_flags() -> dict[str, float]:
    flagged = np.array([[s.flagged for s in forensics.all_signals(clean_election(np.random.default_rng(n)))]
                        for n in range(CLEAN_ELECTIONS)])
    rates = dict(zip(["last_digit", "integer_peaks", "fingerprint"], flagged.mean(axis=0), strict=True))
    print(f"\nfalse-positive rate on {CLEAN_ELECTIONS} clean elections: {rates}")
    return rates


@pytest.mark.parametrize("signal_id", ["last_digit", "integer_peaks", "fingerprint"])
def test_false_positive_rate_at_most_one_percent(clean_flags: dict[str, float], signal_id: str) -> None:
    assert clean_flags[signal_id] <= MAX_FALSE_POSITIVE_RATE


def recall(inject, signal) -> float:  # type: ignore[no-untyped-def]
    hits = []
    for seed in range(INJECTED_ELECTIONS):
        rng = np.random.default_rng(10_000 + seed)
        hits.append(signal(inject(clean_election(rng), rng)).flagged)
    return float(np.mean(hits))


def test_fingerprint_finds_ballot_stuffing_in_five_percent_of_precincts() -> None:
    found = recall(stuff_ballots, forensics.fingerprint_signal)
    print(f"\nfingerprint recall on ballot stuffing (5% of precincts): {found:.2f}")
    assert found >= MIN_RECALL


def test_last_digits_find_counts_rounded_to_tens_in_ten_percent_of_precincts() -> None:
    found = recall(round_counts, forensics.last_digit_signal)
    print(f"\nlast-digit recall on counts rounded to tens (10% of precincts): {found:.2f}")
    assert found >= MIN_RECALL


def test_integer_peaks_find_whole_percent_results_in_ten_percent_of_precincts() -> None:
    found = recall(round_percentages, forensics.integer_peaks_signal)
    print(f"\ninteger-peak recall on whole-percent turnout and share (10% of precincts): {found:.2f}")
    assert found >= MIN_RECALL


def test_exact_baseline_matches_binomial_resampling() -> None:
    # The closed form is the mean of Kobak et al.'s resampling: check it against drawing.
    rng = np.random.default_rng(7)
    election = clean_election(rng)
    exact = forensics.integer_hit_probability(election.ballots_cast, election.registered).sum()
    share = election.ballots_cast / election.registered
    draws = rng.binomial(election.registered[None, :], share[None, :], size=(400, share.size))
    resampled = forensics._integer_hits(draws, election.registered[None, :]).sum(axis=1)
    assert abs(exact - resampled.mean()) < 4 * resampled.std() / np.sqrt(len(resampled)) + 0.5


def test_too_few_precincts_is_not_tested_rather_than_clean() -> None:
    tiny = PrecinctCounts(np.array([500, 600]), np.array([300, 320]), np.array([[100, 190], [150, 160]]),
                          ("a", "b"))
    for signal in forensics.all_signals(tiny):
        assert not signal.tested and not signal.flagged and signal.verdict == "not tested"
        assert signal.explanation.endswith(".") and signal.detail
