"""The data-quality gate: run every check on one snapshot and decide what is quarantined.

`run_checks` works on frames (the warehouse calls it with the previous published
snapshot read from its tables); `validate_snapshot` reads a scrape output directory,
writes `dq_results.parquet` next to the frames and an HTML report.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from etl import config, schema
from etl.normalise import (
    read_snapshot_frames,
    read_snapshot_meta,
)
from etl.quality import derive
from etl.quality.catalog import CHECKS, CHECKS_BY_ID, QualityConfig
from etl.quality.findings import FINDING_COLUMNS, DivisionNames, failure_rows, summary_rows
from etl.quality.memo import GateMemo, MemoPart
from etl.quality.suites import EXPECTATIONS_DIR, SuiteError, SuiteRunner, suite_runner

log = logging.getLogger(__name__)

DQ_RESULTS_FILE = "dq_results.parquet"
# The derived frames the suites validate, by suite name; W2/W4 need a previous snapshot.
CURRENT_FRAMES = (
    "divisions",
    "turnout",
    "results",
    "division_pct_sums",
    "line_coverage",
    "protocol_identities",
    "reconciliation",
    "coverage",
    "number_cells",
)
PREVIOUS_FRAMES = ("revisions", "swings")


@dataclass(frozen=True)
class ValidationOutcome:
    """What the gate decided about one snapshot."""

    dq_results: pd.DataFrame
    critical_contests: frozenset[str]
    report_path: Path | None


def run_checks(
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    results: pd.DataFrame,
    snapshot_meta: dict[str, Any],
    previous: tuple[pd.DataFrame, pd.DataFrame] | None,
    *,
    quality_config: QualityConfig | None = None,
    expectations_dir: Path = EXPECTATIONS_DIR,
    memo: GateMemo | None = None,
) -> pd.DataFrame:
    """Run every check on one snapshot's frames; return `dq_results` (`etl.schema.DQ_RESULTS`).

    `previous` is the previous published snapshot's (turnout, results), or None. With a
    `memo`, a derived frame equal to one GX validated before gets that validation's
    outcomes (`etl.quality.memo`); GX is imported only if a frame is new.
    """
    runner = suite_runner(expectations_dir)
    started = time.perf_counter()
    settings = quality_config or QualityConfig()
    snapshot_id = str(snapshot_meta.get("snapshot_id") or "")
    if not snapshot_id:
        raise ValueError("snapshot_meta has no snapshot_id")
    divisions = _conform(divisions, schema.DIVISIONS, "divisions", snapshot_id)
    turnout = _conform(turnout, schema.TURNOUT, "turnout", snapshot_id)
    results = _conform(results, schema.RESULTS, "results", snapshot_id)
    before = (
        derive.PreviousSnapshot(
            turnout=_conform(previous[0], schema.TURNOUT, "previous turnout", None),
            results=_conform(previous[1], schema.RESULTS, "previous results", None),
        )
        if previous is not None
        else None
    )

    keyed = derive.with_keys(divisions, turnout, results, before)
    _check_suites_complete(runner.specs, expectations_dir)
    names = DivisionNames.from_divisions(divisions)
    parameters = settings.suite_parameters()
    makers = frame_makers(
        keyed, snapshot_meta, settings,
        leave_out_unchanged=_unchanged_values_pass(runner.specs.get("revisions")),
        leave_out_still=_still_shares_pass(runner.specs.get("swings"), parameters),
    )

    def check(suite: str, make: FrameMaker) -> SuiteFindings:
        frame, compared = make()
        return _check_suite(runner, suite, frame, compared, parameters, memo, names, settings)

    checked: dict[tuple[str, str], int] = {}
    found: list[pd.DataFrame] = []
    # A helper forked before GX is imported would import it too, on its first frame not in
    # the memo (~1.5 CPU-s and ~190 MiB more): then one process (`etl run` imports GX while
    # its crawl parses, `etl watch` before its first cycle).
    processes = config.gate_processes(len(results)) if runner.warmed else 1
    every, spread = _check_all(makers, check, processes, memo)
    suites = len(makers)
    del makers, check  # their frames (the keyed results: ~50 MB at 100,000 precincts)
    # In the order of the frames, whichever process checked them: the same result as one
    # process checking them in turn.
    for findings in every:
        for key, n in findings.checked.items():
            checked[key] = checked.get(key, 0) + n
        found.extend(findings.found)

    failures = (
        pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=FINDING_COLUMNS)
    )
    contests = _contests(snapshot_meta, divisions, turnout, results, failures["contest_id"])
    summaries = summary_rows(
        failures, checked, contests, _skip_reasons(snapshot_meta, contests, before),
        to_check=rows_to_check(divisions, turnout, results),
    )
    order = {check.check_id: i for i, check in enumerate(CHECKS)}
    failures = failures.assign(_order=failures["check_id"].map(order)).sort_values(
        ["_order", "contest_id", "division_id", "choice_position"], kind="stable"
    ).drop(columns="_order")
    dq_results = pd.concat([summaries, failures], ignore_index=True)
    dq_results.insert(0, "snapshot_id", snapshot_id)
    dq_results = dq_results[list(schema.DQ_RESULTS)].astype(schema.DQ_RESULTS)

    _log_summary(snapshot_id, dq_results, len(divisions), len(results), started, memo,
                 (suites, spread))
    return dq_results


FrameMaker = Callable[[], tuple[pd.DataFrame, dict[str, int] | None]]


def frame_makers(
    keyed: derive.KeyedFrames,
    snapshot_meta: dict[str, Any],
    settings: QualityConfig,
    *,
    leave_out_unchanged: bool = True,
    leave_out_still: bool = False,
) -> list[tuple[str, FrameMaker]]:
    """Every frame a suite validates, by suite name (see `etl.quality.derive`), as a
    function that makes it: the frame, and for a frame that leaves out comparisons that
    cannot fail, how many it stands for per contest (else None).

    Made when asked, so that a caller that drops each frame once validated never holds
    them all: at 100,000 precincts several have ~2 M rows, and together they made the
    gate's peak (issue 9's memory budget). The frames do not depend on each other, so
    processes may make them in any order.
    """
    divisions, turnout, results, previous = (
        keyed.divisions, keyed.turnout, keyed.results, keyed.previous
    )
    keyed_results = derive.keyed_results(results, turnout)
    lines = derive.contest_lines(divisions, keyed_results)
    # A contest that lost pages has parents whose missing children cannot be summed.
    failed_contests = derive.contests_with_failures(snapshot_meta)
    makers: list[tuple[str, FrameMaker]] = [
        ("divisions", lambda: (divisions, None)),
        ("turnout", lambda: (turnout.reset_index(drop=True), None)),
        ("results", lambda: (keyed_results, None)),
        ("division_pct_sums", lambda: (derive.division_pct_sums(
            results, settings.pct_sum_tolerance_per_line), None)),
        ("line_coverage", lambda: (derive.line_coverage(
            divisions, turnout, keyed_results, lines, keyed.n_lines), None)),
        ("protocol_identities", lambda: (
            derive.protocol_identities(turnout, keyed_results, lines), None)),
        ("reconciliation", lambda: (derive.reconciliation(
            divisions, turnout, keyed_results, keyed.n_lines, failed_contests), None)),
        ("coverage", lambda: (derive.coverage(divisions, turnout, snapshot_meta, previous),
                              None)),
        ("number_cells", lambda: (derive.number_cells(divisions, snapshot_meta), None)),
    ]
    if previous is None:
        return makers

    def revisions() -> tuple[pd.DataFrame, dict[str, int] | None]:
        made = derive.revisions(turnout, keyed_results, previous,
                                leave_out_unchanged=leave_out_unchanged)
        return made.frame, made.compared

    def swings() -> tuple[pd.DataFrame, dict[str, int] | None]:
        frame = derive.swings(divisions, turnout, results, previous,
                              settings.swing_min_progress_pp)
        if not leave_out_still:
            return frame, None
        # A share that did not move cannot fail W4 as shipped (see `_still_shares_pass`):
        # such lines are counted as compared, not validated (a re-stamped portal's are all).
        return (frame[frame["share_change_pp"] != 0].reset_index(drop=True),
                derive.counts_per_contest(frame["contest_id"]))

    return [*makers, ("revisions", revisions), ("swings", swings)]


@dataclass(frozen=True)
class SuiteFindings:
    """What one suite found on its frame: the (check, contest) pairs it checked, with how
    many rows or comparisons each, and the failure rows (`etl.quality.findings`)."""

    checked: dict[tuple[str, str], int]
    found: list[pd.DataFrame]


def _check_suite(
    runner: SuiteRunner, suite: str, frame: pd.DataFrame, compared: dict[str, int] | None,
    parameters: dict[str, Any], memo: GateMemo | None, names: DivisionNames,
    settings: QualityConfig,
) -> SuiteFindings:
    # What a suite checked: its frame's rows, or the comparisons a pruned frame stands for
    # (`compared`); an empty frame that stands for nothing checked nothing.
    per_contest = compared
    if per_contest is None:
        per_contest = derive.counts_per_contest(frame["contest_id"])
    checked: dict[tuple[str, str], int] = {}
    if len(frame) or any(per_contest.values()):
        for check_id in dict.fromkeys(runner.check_ids(suite)):
            for contest, n in per_contest.items():
                key = (check_id, str(contest))
                checked[key] = checked.get(key, 0) + int(n)
    found: list[pd.DataFrame] = []
    reported: dict[str, set[int]] = {}
    for outcome in runner.run(suite, frame, parameters, memo):
        rows = list(outcome.failing_rows)
        if CHECKS_BY_ID[outcome.check_id].one_failure_per_row:
            seen = reported.setdefault(outcome.check_id, set())
            rows = [r for r in rows if r not in seen]
            seen.update(rows)
        if rows:
            found.append(failure_rows(frame.iloc[rows], outcome.check_id, outcome.rule,
                                      outcome.kwargs, names, settings))
    return SuiteFindings(checked, found)


# How long the gate waits for a helper process once it has checked its own share (plus ten
# times what that took), before it checks the helper's suites itself.
HELPER_GRACE_S = 60.0
# The order the processes take the suites in, the slowest to make or validate first (kg2021
# re-stamped and 5% changed), so that neither ends long after the other.
_SLOWEST_FIRST = ("reconciliation", "turnout", "swings", "coverage", "revisions",
                  "line_coverage", "protocol_identities", "results", "division_pct_sums",
                  "divisions", "number_cells")


def _check_all(
    makers: list[tuple[str, FrameMaker]], check: Callable[[str, FrameMaker], SuiteFindings],
    processes: int, memo: GateMemo | None, *, helper_grace: float = HELPER_GRACE_S,
) -> tuple[list[SuiteFindings], tuple[int, int] | None]:
    """`check` each suite's frame; the findings in the order of `makers`, and how many
    processes checked them and how many suites the forked ones did (None: one process).

    With `processes` > 1, forked helpers check suites too: each process takes the next
    suite not yet taken (a counter they share), so a slow suite in one does not keep the
    others idle. A helper's findings and what it added to the gate memo come back pickled
    (`etl.forked`); a failure it raised (a broken suite) is raised here. A helper that
    cannot be forked, dies without an answer (the OOM killer) or is not done
    `helper_grace` seconds (plus ten times this process's own share) after this process
    has done its share is given up: its suites are checked here, as in one process.
    """
    if processes <= 1 or len(makers) < 2:
        return [check(suite, make) for suite, make in makers], None
    import multiprocessing

    from etl.forked import ChildDied, ForkedTask

    rank = {suite: i for i, suite in enumerate(_SLOWEST_FIRST)}
    order = sorted(range(len(makers)), key=lambda i: rank.get(makers[i][0], len(rank)))
    taken = multiprocessing.get_context("fork").Value("i", 0)

    def take_and_check() -> dict[int, SuiteFindings]:
        done: dict[int, SuiteFindings] = {}
        while True:
            with taken.get_lock():
                position = taken.value
                taken.value += 1
            if position >= len(order):
                return done
            index = order[position]
            done[index] = check(*makers[index])
            # Frames are made and dropped in `check`: nothing but findings is kept here.

    counted = (memo.hits, memo.misses) if memo is not None else (0, 0)

    def child() -> tuple[dict[int, SuiteFindings], MemoPart | None]:
        done = take_and_check()
        if memo is None:
            return done, None
        part = memo.taken()  # counted from the fork on, as the parent counts its own
        return done, MemoPart(part.used, part.hits - counted[0], part.misses - counted[1])

    helpers: list[ForkedTask[tuple[dict[int, SuiteFindings], MemoPart | None]]] = []
    by_helpers = 0
    try:
        for _ in range(min(processes, len(makers)) - 1):
            try:
                helpers.append(ForkedTask(child, "quality gate"))
            except OSError as exc:  # no memory or processes left for it: fewer processes
                log.warning("quality gate: no helper process (%s); checking its suites here",
                            exc)
                break
        started = time.perf_counter()
        done = take_and_check()
        wait = helper_grace + 10 * (time.perf_counter() - started)
        for helper in helpers:
            try:
                theirs, remembered = helper.result(timeout=wait)
            except (ChildDied, TimeoutError) as exc:
                log.warning("quality gate: %s; its suites are checked here", exc)
                continue
            if memo is not None and remembered is not None:
                memo.add(remembered)
            done.update(theirs)
            by_helpers += len(theirs)
    except BaseException:
        for helper in helpers:  # the gate failed: what the others find is not wanted
            helper.cancel()
        raise
    for index in range(len(makers)):  # those a lost helper had taken
        if index not in done:
            done[index] = check(*makers[index])
    return [done[i] for i in range(len(makers))], (len(helpers) + 1, by_helpers)


def _unchanged_values_pass(spec: Any) -> bool:
    """Whether W2's suite passes a value compared with itself, so such rows may be left out.

    True only for the rule as shipped: `current >= previous` (or_equal), nothing else in
    the suite. A suite changed otherwise gets every comparison, as before.
    """
    if spec is None:
        return False

    def current_at_least_previous(expectation: dict[str, Any]) -> bool:
        kwargs = expectation.get("kwargs") or {}
        return (expectation.get("type") == "expect_column_pair_values_a_to_be_greater_than_b"
                and kwargs.get("column_A") == "current" and kwargs.get("column_B") == "previous"
                and kwargs.get("or_equal") is True and not kwargs.get("row_condition"))

    expectations = spec.body.get("expectations", [])
    return bool(expectations) and all(map(current_at_least_previous, expectations))


def _still_shares_pass(spec: Any, parameters: dict[str, Any]) -> bool:
    """Whether W4's suite passes a share change of 0, so lines whose share did not move may
    be left out of its frame.

    True only for the rule as shipped: `share_change_pp_abs` at most a maximum that is not
    negative, no minimum above 0, nothing else in the suite. Otherwise every line is validated.
    """
    if spec is None:
        return False

    def zero_passes(expectation: dict[str, Any]) -> bool:
        kwargs = expectation.get("kwargs") or {}
        if (expectation.get("type") != "expect_column_values_to_be_between"
                or kwargs.get("column") != "share_change_pp_abs" or kwargs.get("row_condition")
                or set(kwargs) - {"column", "min_value", "max_value"}):
            return False
        low, high = (_value(kwargs.get(bound), parameters) for bound in ("min_value", "max_value"))
        return isinstance(high, int | float) and high >= 0 and (
            low is None or (isinstance(low, int | float) and low <= 0))

    expectations = spec.body.get("expectations", [])
    return bool(expectations) and all(map(zero_passes, expectations))


def _value(bound: Any, parameters: dict[str, Any]) -> Any:
    """A suite bound, with `{"$PARAMETER": name}` looked up in the expectation parameters."""
    if isinstance(bound, dict) and set(bound) == {"$PARAMETER"}:
        return parameters.get(bound["$PARAMETER"])
    return bound


def critical_contests(dq_results: pd.DataFrame) -> frozenset[str]:
    """Contests with a failed critical check: their snapshot is quarantined."""
    failed = dq_results[
        (dq_results["severity"] == "critical") & ~dq_results["success"].astype(bool)
    ]
    return frozenset(str(c) for c in failed["contest_id"].dropna().unique())


def validate_snapshot(
    snapshot_dir: Path,
    previous_dir: Path | None = None,
    report_dir: Path | None = None,
    *,
    previous: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    quality_config: QualityConfig | None = None,
    memo_path: Path | None = None,
) -> ValidationOutcome:
    """Validate a scrape output directory; write `dq_results.parquet` there and a report.

    The previous published snapshot is a directory (`previous_dir`) or, from the
    warehouse, its (turnout, results) frames (`previous`); not both. `memo_path` is the
    election's `GateMemo`: read before, rewritten with this validation's outcomes after.
    """
    from etl.quality.report import write_report

    if previous_dir is not None and previous is not None:
        raise ValueError("give the previous snapshot as a directory or as frames, not both")
    snapshot_dir = Path(snapshot_dir)
    meta = read_snapshot_meta(snapshot_dir)
    frames = read_snapshot_frames(snapshot_dir)
    if previous_dir is not None:
        previous_frames = read_snapshot_frames(Path(previous_dir))
        previous = (previous_frames["turnout"], previous_frames["results"])
    memo = GateMemo.load(memo_path) if memo_path is not None else None
    dq_results = run_checks(
        frames["divisions"], frames["turnout"], frames["results"], meta, previous,
        quality_config=quality_config, memo=memo,
    )
    if memo is not None:
        memo.save()
    write_dq_results(dq_results, snapshot_dir / DQ_RESULTS_FILE)
    report_path = write_report(dq_results, meta, report_dir or config.report_dir())
    return ValidationOutcome(dq_results, critical_contests(dq_results), report_path)


def write_dq_results(dq_results: pd.DataFrame, path: Path) -> None:
    """Write the results next to the snapshot, atomically (a reader never sees half)."""
    tmp = path.with_name(f".{path.name}.tmp")
    dq_results.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _check_suites_complete(specs: dict[str, Any], expectations_dir: Path) -> None:
    """Every derived frame has its suite and every check an expectation, or nothing runs.

    A suite file that is missing (or a check no suite names) would otherwise make its
    checks report success on nothing checked.
    """
    known = set(CURRENT_FRAMES) | set(PREVIOUS_FRAMES)
    unknown = set(specs) - known
    if unknown:
        raise SuiteError(
            f"suites {sorted(unknown)} in {expectations_dir} validate no derived frame "
            f"(known: {', '.join(CURRENT_FRAMES + PREVIOUS_FRAMES)})"
        )
    missing = sorted(known - set(specs))
    if missing:
        raise SuiteError(
            f"no suite file {', '.join(f'{name}.json' for name in missing)} in "
            f"{expectations_dir}: the checks it holds would silently not run"
        )
    named = {
        str((expectation.get("meta") or {}).get("check_id"))
        for spec in specs.values()
        for expectation in spec.body.get("expectations", [])
    }
    unchecked = [check.check_id for check in CHECKS if check.check_id not in named]
    if unchecked:
        raise SuiteError(
            f"checks {', '.join(unchecked)} have no expectation in any suite under "
            f"{expectations_dir}: they would report success without running"
        )


def rows_to_check(
    divisions: pd.DataFrame, turnout: pd.DataFrame, results: pd.DataFrame
) -> dict[tuple[str, str], tuple[int, str]]:
    """Per (check, contest): how many source rows the check must look at, and what they are.

    A check that checked nothing where this is above zero failed to run (a renamed column,
    a derived frame emptied by a parser change): that is a failure, never "passed on 0".
    W1, W2 and W4 compare pairs that may legitimately not exist yet (nothing fully
    counted, a first snapshot); they are reported as skipped, never as passed.
    """
    by_contest = {
        "divisions": divisions["contest_id"].value_counts().to_dict(),
        "turnout": turnout["contest_id"].value_counts().to_dict(),
        "results": results["contest_id"].value_counts().to_dict(),
        "voted": results.loc[results["votes"].fillna(0) > 0, ["contest_id", "division_id"]]
        .drop_duplicates()["contest_id"].value_counts().to_dict(),
        "voted_rows": results.loc[results["votes"].fillna(0) > 0, "contest_id"]
        .value_counts().to_dict(),
    }
    population = {
        "C1": (("voted",), "divisions with votes"),
        "C2": (("turnout",), "divisions"),
        "C3": (("turnout",), "divisions"),
        "C4": (("voted_rows",), "result rows with votes"),
        "C5": (("turnout", "results"), "turnout and result rows"),
        "C6": (("turnout", "results"), "turnout and result rows"),
        "W3": (("divisions",), "divisions"),
    }
    contests = set().union(*(counts.keys() for counts in by_contest.values()))
    return {
        (check_id, str(contest)): (
            sum(int(by_contest[source].get(contest, 0)) for source in sources), what
        )
        for check_id, (sources, what) in population.items()
        for contest in contests
    }


def _conform(
    frame: pd.DataFrame, columns: dict[str, str], what: str, snapshot_id: str | None
) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {', '.join(missing)}")
    typed = frame[list(columns)].astype(columns).reset_index(drop=True)
    if snapshot_id is not None:
        other = set(typed["snapshot_id"].dropna().unique()) - {snapshot_id}
        if other:
            raise ValueError(
                f"{what} frame holds rows of snapshot(s) {sorted(other)}, not only {snapshot_id}"
            )
    return typed


def _contests(
    meta: dict[str, Any], *sources: pd.DataFrame | pd.Series
) -> list[str | None]:
    ordered: list[str | None] = list(dict.fromkeys(derive._listed_contests(meta)))
    seen = set(ordered)
    extra: set[str] = set()
    has_election_level = False
    for source in sources:
        values = source["contest_id"] if isinstance(source, pd.DataFrame) else source
        for value in values.unique():
            if pd.isna(value):
                has_election_level = True
            elif value not in seen:
                extra.add(str(value))
    ordered += sorted(extra)
    if has_election_level:
        ordered.append(None)
    return ordered


def _skip_reasons(
    meta: dict[str, Any],
    contests: Iterable[str | None],
    previous: derive.PreviousSnapshot | None,
) -> dict[tuple[str, str | None], str]:
    reasons: dict[tuple[str, str | None], str] = {}
    failed_pages: dict[str, int] = {}
    for failure in meta.get("failures") or []:
        if failure.get("contest_id"):
            failed_contest = str(failure["contest_id"])
            failed_pages[failed_contest] = failed_pages.get(failed_contest, 0) + 1
    for contest in contests:
        if previous is None:
            for check in CHECKS:
                if check.needs_previous:
                    reasons[(check.check_id, contest)] = "not checked: no previous snapshot given"
        if contest in failed_pages:
            reasons[("W1", contest)] = (
                f"not checked: {failed_pages[contest]} page(s) of this contest failed (see W3)"
            )
    return reasons


def _log_summary(
    snapshot_id: str, dq_results: pd.DataFrame, n_divisions: int, n_results: int, started: float,
    memo: GateMemo | None, suites: tuple[int, tuple[int, int] | None],
) -> None:
    summaries = dq_results[dq_results["division_id"].isna()]
    failed = summaries[~summaries["success"].astype(bool)]
    instances = dq_results[dq_results["division_id"].notna()]
    by_check = instances["check_id"].value_counts().sort_index().to_dict()
    log.info(
        "validated snapshot %s: %d divisions, %d result rows in; %d failure rows out %s; "
        "%d critical and %d warning (check, contest) pairs failed; %.2fs; %d suites%s%s",
        snapshot_id, n_divisions, n_results, len(instances), by_check,
        int((failed["severity"] == "critical").sum()), int((failed["severity"] == "warning").sum()),
        time.perf_counter() - started, suites[0],
        "" if suites[1] is None else
        f" in {suites[1][0]} processes ({suites[1][1]} by the forked ones)",
        "" if memo is None else
        f"; {memo.hits} frames as validated before (gate memo), {memo.misses} validated by GX",
    )
