"""The audit before publishing: did every configured check run for every contest?

`dq_results.parquet` is trusted only when it holds a summary row (division_id null) for
every check of the catalog (`etl.quality.catalog.CHECKS`) and every contest of the
snapshot. An empty file, a gate that died half-way or a file from an older gate with
fewer checks leaves contests unaudited: they are quarantined, never published.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from etl.quality.catalog import CHECKS


def expected_checks() -> tuple[str, ...]:
    """The checks every contest must have a result for (the catalog, in order)."""
    return tuple(check.check_id for check in CHECKS)


def unaudited_contests(dq_results: pd.DataFrame, contests: Iterable[str]) -> dict[str, str]:
    """Contests lacking a summary row for some expected check, with the reason to show."""
    summaries = dq_results[dq_results["division_id"].isna()]
    present = set(zip(summaries["check_id"].astype(str), summaries["contest_id"], strict=True))
    reasons: dict[str, str] = {}
    for contest in contests:
        missing = [c for c in expected_checks() if (c, contest) not in present]
        if missing:
            reasons[contest] = (
                f"quality gate incomplete: no result for check(s) {', '.join(missing)} of "
                f"this contest in dq_results.parquet ({len(dq_results)} rows); held until "
                "the gate runs in full (etl validate / re-run the validate task)"
            )
    return reasons
