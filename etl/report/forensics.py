"""Election-forensic signals on precinct counts: warnings for a person to look at, never a verdict.

Three classic signals, each vectorised over the precincts of one contest:
- last digits of the vote counts should be close to uniform (rounded or invented counts
  pile up on 0 and 5);
- integer percentages: turnout and party shares land on whole percents no more often than
  chance says (Kobak, Shpilkin & Pshenichnikov 2016), the chance level taken from binomial
  resampling of the precincts' own counts;
- the turnout × leading-party-share "fingerprint" (Klimek et al. 2012): ballot stuffing
  shows as a cluster of precincts with both very high turnout and a very high share.

They never quarantine anything: natural elections can trip them, and the gate's checks are
about the portal's arithmetic, not about the election. False-positive rates and recall,
measured on synthetic elections, are in the README (tests/test_forensics.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

# Counts below this are left out of the last-digit test: a small count's last digit is
# not uniform even in an honest count (a party with 3 votes cannot end in 7 often).
LAST_DIGIT_MIN_COUNT = 50
LAST_DIGIT_ALPHA = 1e-4
# Precincts with fewer voters than this are left out of the percentage tests: with 40
# voters every count is a coarse percentage.
MIN_PRECINCT_SIZE = 100
INTEGER_PEAK_Z = 4.0  # one-sided, per quantity (turnout and up to three shares)
INTEGER_PEAK_SHARES = 3  # the largest parties' shares tested besides turnout
FINGERPRINT_Z = 2.0  # robust z-score (logit scale) beyond which a precinct is "extreme"
FINGERPRINT_ALPHA = 1e-4
FINGERPRINT_MIN_SHARE = 0.01  # of precincts in the corner, so a handful never flags

SIGNAL_TEXTS = {
    "last_digit": (
        "Last digits of precinct vote counts",
        "In honest counts of 50 votes or more the last digit is close to uniform; an excess "
        "of some digits (typically 0 and 5) suggests counts that were rounded or made up.",
    ),
    "integer_peaks": (
        "Integer-percentage peaks (Kobak, Shpilkin & Pshenichnikov 2016)",
        "Precinct turnout and party shares should land on whole percentages no more often "
        "than binomial resampling of the same precincts' counts predicts; peaks there suggest "
        "results written to a target percentage.",
    ),
    "fingerprint": (
        "Turnout × share fingerprint (Klimek et al. 2012)",
        "Ballot stuffing adds votes for one party to turnout, so it shows as a cluster of "
        "precincts where both turnout and the leading party's share are extreme, beyond "
        "what the bulk of precincts predicts.",
    ),
}


@dataclass(frozen=True)
class PrecinctCounts:
    """One contest's precinct counts: rows are precincts, `votes` columns are ballot lines."""

    registered: np.ndarray  # int, shape (P,)
    ballots_cast: np.ndarray  # int, shape (P,)
    votes: np.ndarray  # int, shape (P, K)
    line_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.votes.ndim != 2 or self.votes.shape[0] != self.registered.shape[0] \
                or self.ballots_cast.shape != self.registered.shape \
                or self.votes.shape[1] != len(self.line_names):
            raise ValueError("registered, ballots_cast and votes must describe the same precincts")


@dataclass(frozen=True)
class Signal:
    """One signal's outcome. `tested` is false when there was too little to test."""

    signal_id: str
    flagged: bool
    tested: bool
    statistic: float
    p_value: float | None
    detail: str

    @property
    def title(self) -> str:
        """Short name of the signal."""
        return SIGNAL_TEXTS[self.signal_id][0]

    @property
    def explanation(self) -> str:
        """One sentence: what it looks at and what a flag suggests."""
        return SIGNAL_TEXTS[self.signal_id][1]

    @property
    def verdict(self) -> str:
        """`warning`, `no signal` or `not tested`."""
        if not self.tested:
            return "not tested"
        return "warning" if self.flagged else "no signal"


def all_signals(counts: PrecinctCounts) -> list[Signal]:
    """The three signals, in the order the report shows them."""
    return [last_digit_signal(counts), integer_peaks_signal(counts),
            fingerprint_signal(counts)]


def last_digit_signal(counts: PrecinctCounts) -> Signal:
    """Chi-square test of the last digits of the vote counts ≥ LAST_DIGIT_MIN_COUNT (uniform, tilted)."""
    values = counts.votes[counts.votes >= LAST_DIGIT_MIN_COUNT]
    if values.size < 100:
        return Signal("last_digit", False, False, 0.0, None,
                      f"only {values.size} counts of {LAST_DIGIT_MIN_COUNT} votes or more (need 100)")
    observed = np.bincount(values % 10, minlength=10)
    # Counts fall off smoothly (fewer 59s than 50s when fewer precincts have more votes),
    # which tilts the digits linearly; the expected frequencies follow that tilt, so only
    # bumps beyond it (a pile on 0 and 5) count. One degree of freedom goes to the tilt.
    digits = np.arange(10) - 4.5
    tilt = float((digits * (observed / values.size - 0.1)).sum() / (digits**2).sum())
    expected = values.size * np.clip(0.1 + tilt * digits, 1e-3, None)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    p_value = float(stats.chi2.sf(chi2, df=8))
    top = int(np.argmax(observed))
    return Signal(
        "last_digit", p_value < LAST_DIGIT_ALPHA, True, chi2, p_value,
        f"χ² = {chi2:.1f} on 8 df (uniform with a linear tilt) over {values.size:,} counts; "
        f"most frequent last digit {top} ({observed[top] / values.size:.1%}, uniform 10%); "
        f"warning below p = {LAST_DIGIT_ALPHA:g}")


def last_digit_frequencies(counts: PrecinctCounts) -> np.ndarray:
    """Share of each last digit 0–9 among counts ≥ LAST_DIGIT_MIN_COUNT (for the chart)."""
    values = counts.votes[counts.votes >= LAST_DIGIT_MIN_COUNT]
    if values.size == 0:
        return np.zeros(10)
    frequencies: np.ndarray = np.bincount(values % 10, minlength=10) / values.size
    return frequencies


def _integer_hits(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """Whether 100·k/n, written with one decimal, is a whole number (x.0)."""
    percent = 100.0 * numerators / denominators
    fraction = percent - np.floor(percent)
    return (fraction < 0.05 - 1e-9) | (fraction >= 0.95 - 1e-9)


def integer_hit_probability(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """Per precinct: chance that a binomial redraw k' ~ B(n, k/n) gives a whole percent.

    This is the expectation of Kobak et al.'s binomial-resampling baseline, computed exactly
    from the binomial distribution function rather than by drawing: same baseline, no Monte
    Carlo noise, and fast enough for the tests' hundreds of elections.
    """
    n = denominators.astype(np.float64)[:, None]
    p = np.clip(numerators / denominators, 1e-12, 1 - 1e-12)[:, None]
    # Whole percents within 5 standard deviations of the observed percentage hold all but a
    # negligible part of the mass; the counts that read as each are enumerated directly.
    spread_pct = 100 * np.sqrt(p * (1 - p) / n)
    reach = int(np.ceil(5 * spread_pct.max())) + 1
    m = np.round(100 * p) + np.arange(-reach, reach + 1)[None, :]
    first = np.ceil(n * (m - 0.05) / 100 - 1e-9)  # smallest count reading as m.0 %
    stop = np.ceil(n * (m + 0.05) / 100 - 1e-9)  # first count past it
    per_percent = max(int(np.ceil(n.max() / 1000)), 1)  # counts reading as one m.0 %
    k = (first[:, :, None] + np.arange(per_percent)[None, None, :]).reshape(n.shape[0], -1)
    valid = ((k < np.repeat(stop, per_percent, axis=1)) & (k >= 0) & (k <= n)
             & (np.repeat(m, per_percent, axis=1) >= 0) & (np.repeat(m, per_percent, axis=1) <= 100))
    k = np.clip(k, 0, n)
    log_pmf = (special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
               + k * np.log(p) + (n - k) * np.log1p(-p))
    mass = np.where(valid, np.exp(log_pmf), 0.0)
    probability: np.ndarray = np.clip(mass.sum(axis=1), 0.0, 1.0)
    return probability


def integer_peaks_signal(counts: PrecinctCounts) -> Signal:
    """Excess of whole-percent turnout and shares over the binomial-resampling baseline."""
    size_ok = (counts.registered >= MIN_PRECINCT_SIZE) & (counts.ballots_cast >= MIN_PRECINCT_SIZE)
    if size_ok.sum() < 50:
        return Signal("integer_peaks", False, False, 0.0, None,
                      f"only {int(size_ok.sum())} precincts of {MIN_PRECINCT_SIZE}+ voters (need 50)")
    registered = counts.registered[size_ok]
    cast = counts.ballots_cast[size_ok]
    votes = counts.votes[size_ok]
    leaders = np.argsort(-votes.sum(axis=0))[:INTEGER_PEAK_SHARES]
    quantities = [("turnout", cast, registered)] + [
        (f"share of {counts.line_names[j]}", votes[:, j], cast) for j in leaders]
    worst_z, worst_name, details = -np.inf, "", []
    for name, numerators, denominators in quantities:
        observed = int(_integer_hits(numerators, denominators).sum())
        chance = integer_hit_probability(numerators, denominators)
        expected = float(chance.sum())
        spread = max(float(np.sqrt((chance * (1 - chance)).sum())), 1.0)
        z = (observed - expected) / spread
        details.append(f"{name}: {observed} whole-percent precincts vs {expected:.0f} ± "
                       f"{spread:.0f} expected (z = {z:+.1f})")
        if z > worst_z:
            worst_z, worst_name = z, name
    p_value = float(stats.norm.sf(worst_z))
    return Signal("integer_peaks", worst_z > INTEGER_PEAK_Z, True, float(worst_z), p_value,
                  f"{int(size_ok.sum()):,} precincts; " + "; ".join(details)
                  + f"; warning when z > {INTEGER_PEAK_Z:g} (largest: {worst_name})")


def turnout_and_leader_share(counts: PrecinctCounts) -> tuple[np.ndarray, np.ndarray, str]:
    """Per precinct (with voters): turnout and the nationally leading line's share of ballots cast."""
    keep = (counts.registered > 0) & (counts.ballots_cast > 0)
    leader = int(np.argmax(counts.votes.sum(axis=0))) if counts.votes.size else 0
    turnout = counts.ballots_cast[keep] / counts.registered[keep]
    share = counts.votes[keep, leader] / counts.ballots_cast[keep] if counts.votes.size \
        else np.zeros(int(keep.sum()))
    name = counts.line_names[leader] if counts.line_names else ""
    return np.clip(turnout, 0.0, 1.0), np.clip(share, 0.0, 1.0), name


def _robust_z(values: np.ndarray) -> np.ndarray:
    logit = np.log(values / (1.0 - values))
    median = np.median(logit)
    spread = 1.4826 * np.median(np.abs(logit - median))
    result: np.ndarray = (logit - median) / max(float(spread), 1e-6)
    return result


def fingerprint_signal(counts: PrecinctCounts) -> Signal:
    """Precincts with both turnout and the leader's share extreme, against a bivariate-normal bulk."""
    size_ok = counts.registered >= MIN_PRECINCT_SIZE
    subset = PrecinctCounts(counts.registered[size_ok], counts.ballots_cast[size_ok],
                            counts.votes[size_ok], counts.line_names)
    turnout, share, leader = turnout_and_leader_share(subset)
    if turnout.size < 50:
        return Signal("fingerprint", False, False, 0.0, None,
                      f"only {turnout.size} precincts of {MIN_PRECINCT_SIZE}+ voters (need 50)")
    z_turnout = _robust_z(np.clip(turnout, 0.005, 0.995))
    z_share = _robust_z(np.clip(share, 0.005, 0.995))
    rho = float(np.clip(2 * np.sin(np.pi / 6 * stats.spearmanr(z_turnout, z_share).statistic),
                        -0.99, 0.99))
    corner = int(((z_turnout > FINGERPRINT_Z) & (z_share > FINGERPRINT_Z)).sum())
    tail = stats.norm.sf(FINGERPRINT_Z)
    both = float(stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf(
        [-FINGERPRINT_Z, -FINGERPRINT_Z]))  # P(Z1 > z, Z2 > z) by symmetry
    expected = turnout.size * max(both, tail * tail)
    p_value = float(stats.poisson.sf(corner - 1, expected)) if corner else 1.0
    flagged = p_value < FINGERPRINT_ALPHA and corner >= FINGERPRINT_MIN_SHARE * turnout.size
    return Signal(
        "fingerprint", flagged, True, float(corner), p_value,
        f"{corner} of {turnout.size:,} precincts have both turnout and the share of {leader} "
        f"more than {FINGERPRINT_Z:g} robust standard deviations above the median (logit scale); "
        f"{expected:.2f} expected from the bulk (correlation {rho:.2f}); warning when "
        f"p < {FINGERPRINT_ALPHA:g} and at least {FINGERPRINT_MIN_SHARE:.0%} of precincts")
