"""`python -m etl validate DIR [--previous DIR] [--report-dir DIR]`: the gate from a shell.

Exit codes follow the project's contract: 0 no critical check failed, 3 a critical check
failed (the contests named are quarantined), 1 any other error, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from etl.quality.catalog import CHECKS

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CRITICAL = 3
# Enough lines to act on without scrolling an incident away; the rest are in the report.
MAX_PRINTED = 50


def build_parser() -> argparse.ArgumentParser:
    """The `validate` sub-command's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m etl validate",
        description="Run the data-quality checks on a scrape output directory; write "
        "DIR/dq_results.parquet and an HTML report.",
    )
    parser.add_argument("snapshot_dir", type=Path, metavar="DIR", help="scrape output directory")
    parser.add_argument(
        "--previous", type=Path, metavar="DIR", default=None,
        help="the previous published snapshot's directory (enables W2 revisions and W4 swings)",
    )
    parser.add_argument(
        "--report-dir", type=Path, metavar="DIR", default=None,
        help="where the HTML report goes (default: CEC_REPORT_DIR, <data>/reports)",
    )
    return parser


def main_validate(argv: list[str]) -> int:
    """Validate one snapshot directory; print its failures; return the exit code."""
    from etl.normalise import SnapshotDirError
    from etl.quality.gate import validate_snapshot
    from etl.quality.suites import SuiteError

    args = build_parser().parse_args(argv)
    for label, directory in (("snapshot", args.snapshot_dir), ("--previous", args.previous)):
        if directory is not None and not directory.is_dir():
            print(f"error: {label} directory {directory} does not exist", file=sys.stderr)
            return EXIT_ERROR
    try:
        outcome = validate_snapshot(args.snapshot_dir, args.previous, args.report_dir)
    except (SnapshotDirError, SuiteError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR

    dq = outcome.dq_results
    failures = dq[dq["division_id"].notna()]
    rank = {check.check_id: i for i, check in enumerate(CHECKS)}
    failures = failures.assign(
        _critical=failures["severity"] != "critical", _rank=failures["check_id"].map(rank)
    ).sort_values(["_critical", "_rank"], kind="stable")
    for row in failures.head(MAX_PRINTED).itertuples(index=False):
        print(f"{row.severity.upper():8} {row.check_id}  {row.message}")
    if len(failures) > MAX_PRINTED:
        print(f"… {len(failures) - MAX_PRINTED} more failures in the report")
    summaries = dq[dq["division_id"].isna()]
    n_failed_pairs = int((~summaries["success"].astype(bool)).sum())
    n_critical = int((failures["severity"] == "critical").sum())
    n_warning = int((failures["severity"] == "warning").sum())
    print(
        f"snapshot {dq['snapshot_id'].iloc[0] if len(dq) else '?'}: {n_critical} critical and "
        f"{n_warning} warning failures; {n_failed_pairs} of {len(summaries)} (check, contest) "
        f"pairs failed; written {args.snapshot_dir / 'dq_results.parquet'} and "
        f"{outcome.report_path}"
    )
    if outcome.critical_contests:
        print(f"quarantined contests: {', '.join(sorted(outcome.critical_contests))}")
        return EXIT_CRITICAL
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover - a convenience until etl/__main__ wires it
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main_validate(sys.argv[1:]))
