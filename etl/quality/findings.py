"""Turn the rows an expectation flagged into `dq_results` rows a person can act on.

Each rule has a formatter that reads the flagged rows of its derived frame and writes
`observed`, `expected` (numbers as plain text) and the message's detail; the message
starts with the division's name and id, the contest and the ballot line.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from etl.quality.catalog import CHECKS, CHECKS_BY_ID, QualityConfig

FIGURE_LABELS = {
    "registered": "registered voters",
    "ballots_issued": "ballots issued",
    "ballots_cast": "ballots cast",
    "invalid": "invalid ballots",
    "valid": "valid ballots",
    "precincts_counted": "protocols counted",
    "precincts_total": "protocols total",
    "turnout_pct_published": "published turnout",
    "votes": "votes",
    "pct_published": "published percentage",
    "fractional_counts": "count cells holding a fraction",
}
FINDING_COLUMNS = [
    "check_id",
    "severity",
    "success",
    "contest_id",
    "division_id",
    "choice_position",
    "observed",
    "expected",
    "message",
]

Texts = tuple[list[str], list[str], list[str]]
Formatter = Callable[[pd.DataFrame, Mapping[str, Any], QualityConfig], Texts]


def plain(value: object) -> str:
    """A number written plainly (`143.27`, `140998`); a missing value is `missing`."""
    if _missing(value):
        return "missing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return str(int(number)) if number.is_integer() else f"{number:.2f}"
    return str(value)


def pct(value: object) -> str:
    """A percentage with two decimals (`86.96`); a missing value is `missing`."""
    if value is None or value is pd.NA:
        return "missing"
    return f"{float(value):.2f}"  # type: ignore[arg-type]


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _int(value: object) -> int:
    return int(value)  # type: ignore[call-overload]


def _column(rows: pd.DataFrame, name: str) -> list[Any]:
    return rows[name].tolist() if name in rows.columns else [pd.NA] * len(rows)


def line_label(position: object, name: object, against_all: object) -> str:
    """How a ballot line is named in messages: `line 21 «Ата-Журт»` or `against all`."""
    if against_all is True:
        return "against all"
    text = "" if _missing(name) else str(name)
    if not text and _missing(position):
        return ""
    if text and not any(q in text for q in "«»\"“”„"):
        text = f"«{text}»"
    if _missing(position):
        return f"line {text}".strip()
    return f"line {position} {text}".strip()


# --- formatters, one per rule (or family of rules) -------------------------------------


def _c1_pct_sum(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for total, n_lines, limit in zip(
        _column(rows, "pct_sum"), _column(rows, "n_lines"), _column(rows, "pct_limit"), strict=True
    ):
        observed.append(pct(total))
        expected.append("<= 100.00")
        detail.append(
            f"published percentages of its {n_lines} lines sum to {pct(total)}%, at most 100% "
            f"expected (tolerance {float(limit) - 100:.2f} for rounding)"
        )
    return observed, expected, detail


def _c2_line_present(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for present, votes, published, counted, total, listed_by in zip(
        _column(rows, "row_present"),
        _column(rows, "votes"),
        _column(rows, "pct_published"),
        _column(rows, "precincts_counted"),
        _column(rows, "precincts_total"),
        _column(rows, "listed_by"),
        strict=True,
    ):
        progress = f"{plain(counted)} of {plain(total)} protocols counted"
        if present is not True:
            observed.append("missing")
            elsewhere = (
                "" if _missing(listed_by)
                else f" (listed by {plain(listed_by)} divisions of the contest, not by its root)"
            )
            detail.append(
                f"no row in the results table although {progress}: a missing share{elsewhere}"
            )
        else:
            empty = [
                label
                for label, value in (("votes", votes), ("percentage", published))
                if _missing(value)
            ]
            observed.append(" and ".join(empty) + " missing")
            detail.append(f"{' and '.join(empty)} cell empty although {progress}")
        expected.append("votes and percentage")
    return observed, expected, detail


def _c3_identity(rows: pd.DataFrame, kwargs: Mapping[str, Any], config: QualityConfig) -> Texts:
    a, b = kwargs["column_A"], kwargs["column_B"]
    observed, expected, detail = [], [], []
    for left, right, lines, invalid, valid in zip(
        _column(rows, a),
        _column(rows, b),
        _column(rows, "lines_votes_sum"),
        _column(rows, "invalid"),
        _column(rows, "valid"),
        strict=True,
    ):
        observed.append(plain(left))
        expected.append(plain(right))
        difference = _int(left) - _int(right)
        if a == "votes_plus_invalid":
            text = (
                f"lines' votes (against all included) {plain(lines)} + invalid {plain(invalid)} "
                f"= {plain(left)}, but ballots cast = {plain(right)} (difference {difference:+d})"
            )
        elif a == "valid_plus_invalid":
            text = (
                f"valid {plain(valid)} + invalid {plain(invalid)} = {plain(left)}, but ballots "
                f"cast = {plain(right)} (difference {difference:+d})"
            )
        else:
            text = (
                f"lines' votes (against all included) sum to {plain(left)}, but valid = "
                f"{plain(right)} (difference {difference:+d})"
            )
        detail.append(text)
    return observed, expected, detail


def _c4_formula(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for published, formula, votes, cast in zip(
        _column(rows, "pct_published"),
        _column(rows, "pct_expected"),
        _column(rows, "votes"),
        _column(rows, "ballots_cast"),
        strict=True,
    ):
        observed.append(pct(published))
        expected.append(pct(formula))
        ratio = (
            f" ({float(published) / float(formula):.2f}× the formula)" if float(formula) > 0 else ""
        )
        detail.append(
            f"published {pct(published)}%, but votes / ballots cast × 100 = {plain(votes)} / "
            f"{plain(cast)} × 100 = {pct(formula)}%{ratio}"
        )
    return observed, expected, detail


def _range(rows: pd.DataFrame, kwargs: Mapping[str, Any], config: QualityConfig) -> Texts:
    column = kwargs["column"]
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    label = FIGURE_LABELS.get(column, column)
    is_pct = column in ("pct_published", "turnout_pct_published")
    bounds = f"within {plain(low)}–{plain(high)}" if high is not None else f">= {plain(low)}"
    observed, expected, detail = [], [], []
    for value in _column(rows, column):
        shown = pct(value) if is_pct else plain(value)
        observed.append(shown)
        expected.append(bounds)
        if high is None:
            detail.append(f"{label} is {shown}: a count cannot be negative")
        else:
            detail.append(f"{label} is {shown}{'%' if is_pct else ''}, expected {bounds}")
    return observed, expected, detail


def _pair_at_most(rows: pd.DataFrame, kwargs: Mapping[str, Any], config: QualityConfig) -> Texts:
    larger, smaller = kwargs["column_A"], kwargs["column_B"]
    observed, expected, detail = [], [], []
    for big, small in zip(_column(rows, larger), _column(rows, smaller), strict=True):
        observed.append(plain(small))
        expected.append(f"<= {plain(big)}")
        detail.append(
            f"{FIGURE_LABELS.get(smaller, smaller)} {plain(small)} exceed "
            f"{FIGURE_LABELS.get(larger, larger)} {plain(big)}"
        )
    return observed, expected, detail


def _c6_unique(rows: pd.DataFrame, kwargs: Mapping[str, Any], config: QualityConfig) -> Texts:
    key = list(kwargs["column_list"])
    # GX flags every copy of a duplicated key, so the flagged rows hold all the copies.
    counts = rows.groupby(key, dropna=False, sort=False)[key[0]].transform("size").tolist()
    positions = (
        rows.groupby(key, dropna=False, sort=False)["choice_position"]
        .transform(lambda s: ", ".join(plain(v) for v in s))
        .tolist()
        if "choice_position" in rows.columns
        else [""] * len(rows)
    )
    observed = [f"{n} rows" for n in counts]
    expected = ["1 row"] * len(rows)
    if "name_key" in key:
        detail = [
            f"the same candidate appears {n} times in this division's table (positions {p})"
            for n, p in zip(counts, positions, strict=True)
        ]
    elif "line_key" in key:
        detail = [f"{n} rows for this ballot line in one division's table" for n in counts]
    else:
        detail = [f"{n} rows for this division in one snapshot" for n in counts]
    return observed, expected, detail


def _w1_reconciliation(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for figure, parent, children, n in zip(
        _column(rows, "figure"),
        _column(rows, "parent_value"),
        _column(rows, "children_sum"),
        _column(rows, "n_children"),
        strict=True,
    ):
        observed.append(plain(parent))
        expected.append(plain(children))
        detail.append(
            f"{FIGURE_LABELS.get(figure, figure)} {plain(parent)}, but its {plain(n)} "
            f"subdivisions (all counted) sum to {plain(children)} "
            f"(difference {_int(parent) - _int(children):+d})"
        )
    return observed, expected, detail


def _w2_revision(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for figure, now, before, previous_id in zip(
        _column(rows, "figure"),
        _column(rows, "current"),
        _column(rows, "previous"),
        _column(rows, "previous_snapshot_id"),
        strict=True,
    ):
        observed.append(plain(now))
        expected.append(f">= {plain(before)}")
        detail.append(
            f"{FIGURE_LABELS.get(figure, figure)} went down from {plain(before)} to {plain(now)} "
            f"({_int(now) - _int(before):+d}) since the previous snapshot {plain(previous_id)}"
        )
    return observed, expected, detail


_COVERAGE_TEXT = {
    "page_failed": "page could not be fetched or parsed: {detail}",
    "no_page": "listed as a division but has no figures",
    "parent_missing": "parent page missing: {detail}",
    "root_missing": "the contest's root page was not parsed; its ballot lines are taken from "
    "its divisions",
    "contest_missing": "the contest is listed but none of its pages was parsed",
    "disappeared": "present in the previous snapshot {detail}, missing from this one",
}


def _w3_coverage(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for state, text, status in zip(
        _column(rows, "coverage_state"), _column(rows, "detail"), _column(rows, "status"),
        strict=True,
    ):
        observed.append(f"{state} ({plain(status)})" if not _missing(status) else str(state))
        expected.append("ok")
        detail.append(
            _COVERAGE_TEXT.get(str(state), str(state)).format(
                detail="" if _missing(text) else text
            )
        )
    return observed, expected, detail


def _w4_swing(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for now, before, change, counted_now, counted_before, total, added in zip(
        _column(rows, "share_now"),
        _column(rows, "share_previous"),
        _column(rows, "share_change_pp"),
        _column(rows, "precincts_counted_now"),
        _column(rows, "precincts_counted_previous"),
        _column(rows, "precincts_total"),
        _column(rows, "precincts_added_pp"),
        strict=True,
    ):
        observed.append(pct(now))
        expected.append(f"{pct(before)} ± {config.swing_max_pp:.2f}")
        progress = (
            f"protocols counted went from {plain(counted_before)} to {plain(counted_now)} of "
            f"{plain(total)} ({float(added):+.2f} pp)"
            if not _missing(added)
            else "protocol counts not published"
        )
        detail.append(
            f"national share moved from {pct(before)}% to {pct(now)}% ({float(change):+.2f} pp) "
            f"while {progress}"
        )
    return observed, expected, detail


def _c2_protocols_known(
    rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig
) -> Texts:
    observed, expected, detail = [], [], []
    figures = ("registered", "ballots_cast", "valid", "invalid")
    for row in rows.itertuples(index=False):
        found = [FIGURE_LABELS[f] for f in figures if not _missing(getattr(row, f, None))]
        observed.append("missing")
        expected.append("protocols counted N of M")
        detail.append(
            "no \"protocols processed\" figure on the page, so whether the division is "
            "counted is unknown and its results cannot be checked for missing shares; the "
            "portal may have renamed the row (see the WARNING 'protocol row not recognised' "
            "in the crawl log); other protocol figures found: "
            + (", ".join(found) if found else "none (no protocol row was recognised)")
        )
    return observed, expected, detail


def _c5_fraction(rows: pd.DataFrame, _: Mapping[str, Any], config: QualityConfig) -> Texts:
    observed, expected, detail = [], [], []
    for count, cells in zip(_column(rows, "fractional_counts"), _column(rows, "detail"),
                            strict=True):
        observed.append(plain(count))
        expected.append("0")
        detail.append(f"a count cell holds a fraction ({cells}): a count is a whole number, "
                      f"the figure is left missing")
    return observed, expected, detail


FORMATTERS: dict[str, Formatter] = {
    "fractional_counts_in_range": _c5_fraction,
    "pct_sum_within_limit": _c1_pct_sum,
    "line_present": _c2_line_present,
    "protocols_known": _c2_protocols_known,
    "lines_plus_invalid_equal_cast": _c3_identity,
    "valid_plus_invalid_equal_cast": _c3_identity,
    "lines_equal_valid": _c3_identity,
    "pct_matches_formula": _c4_formula,
    "cast_within_issued": _pair_at_most,
    "issued_within_registered": _pair_at_most,
    "counted_within_total": _pair_at_most,
    "one_row_per_line": _c6_unique,
    "candidate_once": _c6_unique,
    "one_row_per_division": _c6_unique,
    "one_division_row": _c6_unique,
    "parent_equals_children": _w1_reconciliation,
    "no_decrease": _w2_revision,
    "page_present": _w3_coverage,
    "share_stable": _w4_swing,
}


def formatter_for(rule: str) -> Formatter:
    """The formatter of a rule; range rules (`*_non_negative`, `*_in_range`) share one."""
    if rule in FORMATTERS:
        return FORMATTERS[rule]
    if rule.endswith(("_non_negative", "_in_range")):
        return _range
    raise KeyError(f"no message formatter for rule {rule!r}: add one to etl.quality.findings")


@dataclass(frozen=True)
class DivisionNames:
    """Division names by (contest, division), for messages."""

    names: Mapping[tuple[str, str], str]

    @classmethod
    def from_divisions(cls, divisions: pd.DataFrame) -> DivisionNames:
        """Index the divisions frame's names (first row wins on duplicates)."""
        unique = divisions.drop_duplicates(["contest_id", "division_id"])
        keys = zip(unique["contest_id"].tolist(), unique["division_id"].tolist(), strict=True)
        return cls(dict(zip(keys, unique["name"].tolist(), strict=True)))

    def label(self, contest_id: object, division_id: object) -> str:
        """`Чуйская область (7)`, or `division 7101` when the name is unknown."""
        name = self.names.get((str(contest_id), str(division_id)))
        if name is None or _missing(name):
            return f"division {division_id}"
        return f"{name} ({division_id})"


def failure_rows(
    rows: pd.DataFrame,
    check_id: str,
    rule: str,
    kwargs: Mapping[str, Any],
    names: DivisionNames,
    config: QualityConfig,
) -> pd.DataFrame:
    """The `dq_results` rows (without snapshot id) for the rows one rule flagged."""
    observed, expected, detail = formatter_for(rule)(rows, kwargs, config)
    contests = _column(rows, "contest_id")
    divisions = _column(rows, "division_id")
    positions = _column(rows, "choice_position")
    has_line = "choice_name" in rows.columns or "is_against_all" in rows.columns
    lines = (
        [
            line_label(p, n, a)
            for p, n, a in zip(
                positions, _column(rows, "choice_name"), _column(rows, "is_against_all"),
                strict=True,
            )
        ]
        if has_line
        else [""] * len(rows)
    )
    messages = [
        f"{names.label(c, d)}, {c}{', ' + line if line else ''}: {text}"
        for c, d, line, text in zip(contests, divisions, lines, detail, strict=True)
    ]
    return pd.DataFrame(
        {
            "check_id": check_id,
            "severity": CHECKS_BY_ID[check_id].severity,
            "success": False,
            "contest_id": pd.array(contests, dtype="string"),
            "division_id": pd.array(divisions, dtype="string"),
            "choice_position": pd.array(positions, dtype="Int64"),
            "observed": observed,
            "expected": expected,
            "message": messages,
        },
        columns=FINDING_COLUMNS,
    )


def summary_rows(
    failures: pd.DataFrame,
    checked: Mapping[tuple[str, str], int],
    contests: Iterable[str | None],
    skipped: Mapping[tuple[str, str | None], str],
    to_check: Mapping[tuple[str, str], tuple[int, str]] | None = None,
) -> pd.DataFrame:
    """One row per (check, contest): success, the number of failures, and what was checked.

    A check that checked nothing never passes: it fails where `to_check` says the contest
    has rows it should have looked at, and is reported as skipped otherwise.
    """
    to_check = to_check or {}
    counts = (
        failures.groupby(["check_id", "contest_id"], dropna=False).size().to_dict()
        if len(failures)
        else {}
    )
    rows = []
    for check in CHECKS:
        for contest in contests:
            n_failed = int(counts.get((check.check_id, contest), 0))
            n_checked = checked.get((check.check_id, str(contest)), 0)
            reason = skipped.get((check.check_id, contest))
            where = contest if contest is not None else "(election)"
            expected = "0"
            n_rows, what = to_check.get((check.check_id, str(contest)), (0, ""))
            if reason is None and n_failed == 0 and n_checked == 0 and n_rows:
                n_failed = 1
                observed, expected = "0 checked", f"{n_rows} {what}"
                message = (
                    f"{check.check_id} {check.title}, {where}: nothing checked although the "
                    f"contest has {n_rows} {what}: the check did not run on them (a renamed "
                    "column or an emptied derived frame?); silence is not success"
                )
            elif reason is None and n_failed == 0 and n_checked == 0:
                observed = "skipped"
                message = (f"{check.check_id} {check.title}, {where}: not checked: nothing to "
                           "check in this snapshot")
            elif reason is not None and n_failed == 0:
                observed, message = "skipped", f"{check.check_id} {check.title}, {where}: {reason}"
            elif n_failed:
                observed = str(n_failed)
                message = (
                    f"{check.check_id} {check.title}, {where}: {n_failed} failure(s) in "
                    f"{n_checked} {check.unit} checked — {check.meaning}"
                )
            else:
                observed = "0"
                message = (
                    f"{check.check_id} {check.title}, {where}: passed on {n_checked} {check.unit}"
                )
            rows.append(
                {
                    "check_id": check.check_id,
                    "severity": check.severity,
                    "success": n_failed == 0,
                    "contest_id": contest,
                    "division_id": None,
                    "choice_position": None,
                    "observed": observed,
                    "expected": expected,
                    "message": message,
                }
            )
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)
