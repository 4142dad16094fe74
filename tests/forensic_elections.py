"""Synthetic precinct-level elections for the forensic signals: clean, and with fraud injected.

Clean: regions with their own turnout and party strength, precincts varying around them,
ballots drawn binomially and votes multinomially, so counts have the noise real counts have.
Injected (in a fraction of precincts): ballot stuffing for the leading party, counts
rounded to tens, and turnout and leader's share written to a whole percentage.
"""

from __future__ import annotations

import numpy as np

from etl.report.forensics import PrecinctCounts

PARTIES = 8
REGIONS = 9


def clean_election(rng: np.random.Generator, precincts: int = 1000) -> PrecinctCounts:
    """One honest election."""
    region = rng.integers(0, REGIONS, precincts)
    registered = rng.integers(300, 2500, precincts)
    region_turnout = rng.normal(0.3, 0.35, REGIONS)
    turnout = 1 / (1 + np.exp(-(region_turnout[region] + rng.normal(0, 0.35, precincts))))
    cast = rng.binomial(registered, turnout)
    invalid = rng.binomial(cast, 0.02)
    base = np.log(rng.dirichlet(np.full(PARTIES, 2.0)))
    region_strength = rng.normal(0, 0.35, (REGIONS, PARTIES))
    logits = base[None, :] + region_strength[region] + rng.normal(0, 0.3, (precincts, PARTIES))
    shares = np.exp(logits)
    shares /= shares.sum(axis=1, keepdims=True)
    votes = rng.multinomial(cast - invalid, shares)
    return PrecinctCounts(registered, cast, votes, tuple(f"party {i + 1}" for i in range(PARTIES)))


def _chosen(rng: np.random.Generator, counts: PrecinctCounts, fraction: float) -> np.ndarray:
    return rng.random(counts.registered.size) < fraction


def stuff_ballots(counts: PrecinctCounts, rng: np.random.Generator,
                  fraction: float = 0.05) -> PrecinctCounts:
    """In `fraction` of precincts, add 50–95% of the non-voters as ballots for the leader."""
    chosen = _chosen(rng, counts, fraction)
    leader = int(np.argmax(counts.votes.sum(axis=0)))
    extra = rng.binomial(counts.registered - counts.ballots_cast, rng.uniform(0.5, 0.95, chosen.size))
    extra = np.where(chosen, extra, 0)
    votes = counts.votes.copy()
    votes[:, leader] += extra
    return PrecinctCounts(counts.registered, counts.ballots_cast + extra, votes, counts.line_names)


def round_counts(counts: PrecinctCounts, rng: np.random.Generator,
                 fraction: float = 0.1) -> PrecinctCounts:
    """In `fraction` of precincts, every vote count is written rounded to tens."""
    chosen = _chosen(rng, counts, fraction)
    votes = np.where(chosen[:, None], np.round(counts.votes / 10).astype(np.int64) * 10, counts.votes)
    cast = counts.ballots_cast - counts.votes.sum(axis=1) + votes.sum(axis=1)
    return PrecinctCounts(counts.registered, cast, votes, counts.line_names)


def round_percentages(counts: PrecinctCounts, rng: np.random.Generator,
                      fraction: float = 0.1) -> PrecinctCounts:
    """In `fraction` of precincts, turnout and the leader's share are written to a whole percent."""
    chosen = _chosen(rng, counts, fraction)
    leader = int(np.argmax(counts.votes.sum(axis=0)))
    turnout_pct = np.round(100 * counts.ballots_cast / counts.registered)
    cast = np.where(chosen, np.round(counts.registered * turnout_pct / 100).astype(np.int64),
                    counts.ballots_cast)
    share_pct = np.round(100 * counts.votes[:, leader] / np.maximum(counts.ballots_cast, 1))
    votes = counts.votes.copy()
    # The others keep their votes; the leader's count is written from the round share.
    votes[:, leader] = np.where(chosen, np.round(cast * share_pct / 100).astype(np.int64),
                                counts.votes[:, leader])
    return PrecinctCounts(counts.registered, cast, votes, counts.line_names)
