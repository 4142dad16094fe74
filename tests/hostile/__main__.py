"""`python -m tests.hostile [CASE …] [--keep DIR]`: run the hostile corpus, print the table.

Exit 0 when every case held (cases pending another change are listed, not counted).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from tests.hostile.cases import CASES, by_name
from tests.hostile.runner import Verdict, run_case


def main(argv: list[str] | None = None) -> int:
    """Run the corpus (or the named cases) and print one row per case."""
    parser = argparse.ArgumentParser(prog="python -m tests.hostile", description=__doc__)
    parser.add_argument("cases", nargs="*", help="only these cases (default: all)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each case's data directory under DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the table is the output
    cases = [by_name()[name] for name in args.cases] if args.cases else list(CASES)
    root = args.keep or Path(tempfile.mkdtemp(prefix="cec-hostile-"))
    verdicts: list[Verdict] = []
    width = max(len(c.name) for c in cases)
    print(f"{'case'.ljust(width)} | exit (expected) | published? (expected) | held")
    print(f"{'-' * width}-|-----------------|-----------------------|-----")
    for case in cases:
        verdict = run_case(case, root / case.name)
        verdicts.append(verdict)
        outcome = verdict.outcome
        exit_text = "hang" if outcome.exit_code is None else str(outcome.exit_code)
        held = "yes" if verdict.held else "NO"
        if case.pending:
            held += " (pending)"
        published = f"{'yes' if outcome.published else 'no':>3} "
        published += f"({'yes' if case.expect_published else 'no'})"
        print(f"{case.name.ljust(width)} | {exit_text:>4} ({case.expect_exit})        | "
              f"{published:<21} | {held}", flush=True)
        for problem in verdict.problems:
            print(f"{' ' * width} |   {problem}", flush=True)
    counted = [v for v in verdicts if not v.case.pending]
    pending = [v for v in verdicts if v.case.pending]
    print(f"\n{sum(v.held for v in counted)} of {len(counted)} cases held"
          + (f"; pending another change ({len(pending)}): " if pending else "")
          + "; ".join(f"{v.case.name} — {v.case.pending}" for v in pending))
    return 0 if all(v.held for v in counted) else 1


if __name__ == "__main__":
    sys.exit(main())
