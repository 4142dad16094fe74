"""The data-quality checks: ids, severities, meanings and tunable thresholds.

The suites under `expectations/` carry the same `check_id` and `severity` on every
expectation; `tests/test_quality.py` asserts that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class Check:
    """One data-quality check: what it guards and what a failure does to the contest."""

    check_id: str
    severity: Severity
    title: str
    meaning: str
    # Several expectations of one check may flag the same derived row (a missing row has
    # neither votes nor a percentage); such a check reports each row once.
    # What the summary row counts as checked ("412 divisions checked").
    unit: str = "rows"
    one_failure_per_row: bool = False
    needs_previous: bool = False


CHECKS: tuple[Check, ...] = (
    Check(
        "C1",
        "critical",
        "percentages sum",
        "The published percentages of one division's ballot lines (against all included) "
        "sum to at most 100% plus rounding tolerance (0.01 per line).",
        unit="divisions",
    ),
    Check(
        "C2",
        "critical",
        "missing shares",
        "Every ballot line of the contest (as its root page lists them) has a row with "
        "votes and a percentage in every division with counted protocols; every division "
        "states its protocols processed (N of M), so none is taken as uncounted by mistake.",
        one_failure_per_row=True,
        unit="divisions and division × line cells",
    ),
    Check(
        "C3",
        "critical",
        "protocol identities",
        "Sum of the lines' votes (against all included) + invalid = ballots cast, and "
        "valid + invalid = ballots cast, exactly, wherever the figures are published.",
        unit="divisions",
    ),
    Check(
        "C4",
        "critical",
        "percentage formula",
        "Each published percentage equals round(votes / ballots cast × 100, 2) within 0.01.",
        unit="result rows",
    ),
    Check(
        "C5",
        "critical",
        "ranges",
        "Counts are non-negative; ballots cast ≤ ballots issued ≤ registered; turnout and "
        "percentages within 0–100; protocols counted ≤ protocols total.",
        unit="turnout and result rows",
    ),
    Check(
        "C6",
        "critical",
        "uniqueness",
        "One row per (snapshot, contest, division, ballot line) and per division; no "
        "candidate name twice in one division's table.",
        one_failure_per_row=True,
        unit="rows",
    ),
    Check(
        "W1",
        "warning",
        "reconciliation",
        "A parent's figures and line votes equal the sum of its children's where every "
        "child is present and fully counted, level by level.",
        unit="parent figures",
    ),
    Check(
        "W2",
        "warning",
        "revisions",
        "No cumulative figure (line votes, ballots cast, protocols counted) is lower than "
        "in the previous published snapshot.",
        needs_previous=True,
        unit="figures compared",
    ),
    Check(
        "W3",
        "warning",
        "coverage",
        "Every page was fetched and parsed: no failures in snapshot.json, no division "
        "linked but without its page, no contest or root page missing, no division gone "
        "since the previous snapshot.",
        unit="divisions and pages",
    ),
    Check(
        "W4",
        "warning",
        "swings",
        "A ballot line's national (root) share does not move by more than 2.0 pp between "
        "snapshots while less than 2.0% of the protocols were added.",
        needs_previous=True,
        unit="root lines",
    ),
)

CHECKS_BY_ID: dict[str, Check] = {check.check_id: check for check in CHECKS}


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the checks; the defaults are what the README documents."""

    # Each published percentage is rounded to two decimals, so each line may add up to
    # 0.005 to the sum; 0.01 per line also absorbs round-half-up vs half-even and floats.
    pct_sum_tolerance_per_line: float = 0.01
    # C4: |published - round(votes / cast × 100, 2)| allowed, for the portal's rounding.
    pct_formula_tolerance: float = 0.01
    # W4: a national share may move by at most this many percentage points…
    swing_max_pp: float = 2.0
    # …between two snapshots in which fewer than this percentage of protocols were added.
    swing_min_progress_pp: float = 2.0

    def suite_parameters(self) -> dict[str, float]:
        """Values for the `$PARAMETER` references in the suites under `expectations/`."""
        return {
            "pct_formula_tolerance": self.pct_formula_tolerance,
            "swing_max_pp": self.swing_max_pp,
        }
