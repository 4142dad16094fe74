"""Derived frames the suites validate: one row per check instance, built with pandas.

Great Expectations validates one row at a time; the rules of an election page are about
groups (a division's lines, a parent's children). Each function here turns the
normalised frames into a frame whose rows are the units a rule speaks about, with the
columns the expectations under `expectations/` name. All of it is vectorised (groupby,
merge): no Python loop runs per row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

DIVISION_KEY = ["contest_id", "division_id"]
LINE_KEY = [*DIVISION_KEY, "line_key"]
AGAINST_ALL_KEY = "against_all"
# Turnout figures a parent must equal the sum of its children on (W1).
RECONCILED_FIGURES = (
    "registered",
    "ballots_issued",
    "ballots_cast",
    "invalid",
    "valid",
    "precincts_counted",
    "precincts_total",
)
# Cumulative figures that must not go down between snapshots (W2), besides line votes.
CUMULATIVE_FIGURES = ("ballots_cast", "precincts_counted")
_QUOTES = str.maketrans("", "", "«»\"“”„'`‘’")
_LINE_COLUMNS = ["contest_id", "line_key", "choice_position", "choice_name", "is_against_all"]


@dataclass(frozen=True)
class PreviousSnapshot:
    """The previous published snapshot's turnout and results, for W2, W3 and W4.

    From the warehouse it may mix snapshots (each contest's latest published one), so
    every comparison takes the snapshot id from the previous row it compares with.
    """

    turnout: pd.DataFrame
    results: pd.DataFrame


def name_key(names: pd.Series) -> pd.Series:
    """Candidate names compared without case, quotes and repeated spaces (C6)."""
    # A contest has a few dozen names repeated over thousands of divisions: normalise
    # each distinct name once.
    codes, uniques = pd.factorize(names, use_na_sentinel=True)
    normalised = np.array(
        [" ".join(str(raw).translate(_QUOTES).casefold().split()) for raw in uniques] + [None],
        dtype=object,
    )
    return pd.Series(normalised[codes], index=names.index, dtype="string")


def with_line_keys(results: pd.DataFrame) -> pd.DataFrame:
    """Results with `line_key` (the ballot line's identity) and `name_key` columns."""
    keyed = results.copy()
    keyed["name_key"] = name_key(keyed["choice_name"])
    # Against all has no ballot number: it is its own line; a numberless line that is not
    # against all (a parse oddity) is keyed by its name so it still counts as one line.
    keyed["line_key"] = (
        keyed["choice_position"]
        .astype("string")
        .mask(keyed["is_against_all"].fillna(False), AGAINST_ALL_KEY)
        .fillna("name:" + keyed["name_key"].fillna(""))
    )
    # One pass over the keys; every "first row of each line" below reuses it (each
    # drop_duplicates on these string keys took seconds at 2,000,000 rows).
    keyed["first_of_line"] = ~keyed.duplicated(LINE_KEY)
    return keyed


def keyed_results(results: pd.DataFrame, turnout: pd.DataFrame) -> pd.DataFrame:
    """Results with line and name keys, the division's ballots cast and the C4 formula."""
    keyed = with_line_keys(results)
    cast = turnout[[*DIVISION_KEY, "ballots_cast"]].drop_duplicates(DIVISION_KEY)
    keyed = keyed.merge(cast, on=DIVISION_KEY, how="left", validate="many_to_one")
    positive_cast = keyed["ballots_cast"].where(keyed["ballots_cast"] > 0)
    keyed["pct_expected"] = (
        (keyed["votes"].astype("Float64") / positive_cast.astype("Float64") * 100).round(2)
    )
    # Rounded so that float noise (0.010000000000002) never decides a failure.
    keyed["pct_deviation"] = (keyed["pct_published"] - keyed["pct_expected"]).abs().round(6)
    return keyed


def division_pct_sums(results: pd.DataFrame, tolerance_per_line: float) -> pd.DataFrame:
    """C1: per division, the sum of its lines' published percentages and its limit."""
    published = results.loc[results["pct_published"].notna(), [*DIVISION_KEY, "pct_published"]]
    sums = (
        published.groupby(DIVISION_KEY, sort=False)["pct_published"]
        .agg(pct_sum="sum", n_lines="size")
        .reset_index()
    )
    sums["pct_sum"] = sums["pct_sum"].astype("Float64").round(2)
    sums["n_lines"] = sums["n_lines"].astype("Int64")
    sums["pct_limit"] = (100 + tolerance_per_line * sums["n_lines"].astype("Float64")).round(4)
    return sums


def contest_lines(divisions: pd.DataFrame, keyed: pd.DataFrame) -> pd.DataFrame:
    """The ballot lines of each contest: those its root page lists.

    A contest whose root lists no lines (root not yet counted, or not parsed) falls back
    to every line any of its divisions lists, so C2 still compares divisions.
    """
    roots = divisions.loc[divisions["parent_id"].isna(), DIVISION_KEY].drop_duplicates()
    root_lines = keyed.merge(roots, on=DIVISION_KEY)[_LINE_COLUMNS]
    fallback = keyed.loc[~keyed["contest_id"].isin(root_lines["contest_id"]), _LINE_COLUMNS]
    lines = pd.concat([root_lines, fallback], ignore_index=True)
    return (
        lines.drop_duplicates(["contest_id", "line_key"])
        .sort_values(["contest_id", "choice_position"], na_position="last", kind="stable")
        .reset_index(drop=True)
    )


def line_coverage(
    divisions: pd.DataFrame, turnout: pd.DataFrame, keyed: pd.DataFrame, lines: pd.DataFrame
) -> pd.DataFrame:
    """C2: one row per (counted division, ballot line of its contest) with what was found.

    The root defines the contest's lines, so a line the root itself dropped is found by
    its divisions: a counted root is also expected to list every line they list.
    """
    counted = turnout.loc[
        turnout["precincts_counted"].fillna(0) > 0,
        [*DIVISION_KEY, "precincts_counted", "precincts_total"],
    ].drop_duplicates(DIVISION_KEY)
    expected = counted.merge(lines, on="contest_id")

    listed = keyed[keyed["first_of_line"]]
    on_root = listed.set_index(["contest_id", "line_key"]).index.isin(
        lines.set_index(["contest_id", "line_key"]).index
    )
    elsewhere = (
        listed[~on_root]
        .groupby(["contest_id", "line_key"], sort=False)
        .agg(
            choice_position=("choice_position", "first"),
            choice_name=("choice_name", "first"),
            is_against_all=("is_against_all", "first"),
            listed_by=("division_id", "size"),
        )
        .reset_index()
    )
    if len(elsewhere):
        roots = divisions.loc[divisions["parent_id"].isna(), DIVISION_KEY].drop_duplicates()
        expected = pd.concat(
            [expected, counted.merge(roots, on=DIVISION_KEY).merge(elsewhere, on="contest_id")],
            ignore_index=True,
        )
    found = keyed.loc[keyed["first_of_line"], [*LINE_KEY, "votes", "pct_published"]]
    frame = expected.merge(found, on=LINE_KEY, how="left", indicator="found")
    frame["row_present"] = (frame.pop("found") == "both").astype("boolean")
    if "listed_by" not in frame.columns:
        frame["listed_by"] = pd.NA
    frame["listed_by"] = frame["listed_by"].astype("Int64")
    return frame.reset_index(drop=True)


def protocol_identities(
    turnout: pd.DataFrame, keyed: pd.DataFrame, lines: pd.DataFrame
) -> pd.DataFrame:
    """C3: per division, the protocol's sums next to ballots cast.

    The lines' sum is only formed when every line of the contest is there once with its
    votes: a missing or duplicated line is C2's or C6's failure, not an identity's.
    """
    per_division = (
        keyed.groupby(DIVISION_KEY, sort=False)
        .agg(
            lines_votes_sum=("votes", "sum"),
            n_rows=("votes", "size"),
            n_votes=("votes", "count"),
            n_line_keys=("line_key", "nunique"),
        )
        .reset_index()
    )
    n_expected = lines.groupby("contest_id").size().rename("n_expected").reset_index()
    per_division = per_division.merge(n_expected, on="contest_id", how="left")
    complete = (
        (per_division["n_votes"] == per_division["n_rows"])
        & (per_division["n_rows"] == per_division["n_line_keys"])
        & (per_division["n_line_keys"] >= per_division["n_expected"].fillna(0))
    )
    per_division["lines_votes_sum"] = (
        per_division["lines_votes_sum"].astype("Int64").where(complete, pd.NA)
    )
    frame = turnout[
        [*DIVISION_KEY, "ballots_cast", "invalid", "valid", "precincts_counted"]
    ].drop_duplicates(DIVISION_KEY)
    frame = frame.merge(
        per_division[[*DIVISION_KEY, "lines_votes_sum", "n_rows"]], on=DIVISION_KEY, how="left"
    )
    frame["lines_votes_sum"] = frame["lines_votes_sum"].astype("Int64")
    frame["votes_plus_invalid"] = frame["lines_votes_sum"] + frame["invalid"]
    frame["valid_plus_invalid"] = frame["valid"] + frame["invalid"]
    # Without an invalid figure the lines can still be held against the valid ballots.
    frame["lines_votes_sum_if_no_invalid"] = frame["lines_votes_sum"].where(
        frame["invalid"].isna(), pd.NA
    )
    return frame.reset_index(drop=True)


def _children_state(divisions: pd.DataFrame, turnout: pd.DataFrame) -> pd.DataFrame:
    """Each child division with whether its page is present and fully counted."""
    children = divisions.loc[
        divisions["parent_id"].notna(), [*DIVISION_KEY, "parent_id"]
    ].drop_duplicates(DIVISION_KEY)
    figures = turnout[[*DIVISION_KEY, *RECONCILED_FIGURES]].drop_duplicates(DIVISION_KEY)
    state = children.merge(figures, on=DIVISION_KEY, how="left", indicator="page")
    state["complete"] = (
        (state.pop("page") == "both")
        & (state["precincts_total"].notna())
        & (state["precincts_counted"] == state["precincts_total"]).fillna(False)
    )
    return state


def reconciliation(
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    keyed: pd.DataFrame,
    skip_contests: Iterable[str] = (),
) -> pd.DataFrame:
    """W1: per parent and figure (or line), the parent's value and its children's sum.

    Only parents whose children are all present and fully counted are compared, so a
    snapshot taken while the portal updates in place does not raise false warnings.
    """
    state = _children_state(divisions, turnout)
    state = state[~state["contest_id"].isin(list(skip_contests))]
    parent_key = ["contest_id", "parent_id"]
    groups = state.groupby(parent_key, sort=False)
    eligible = groups["complete"].agg(n_children="size", n_complete="sum").reset_index()
    eligible = eligible[eligible["n_children"] == eligible["n_complete"]][
        [*parent_key, "n_children"]
    ]
    eligible_children = state.merge(eligible, on=parent_key)

    sums = eligible_children.groupby(parent_key, sort=False)[list(RECONCILED_FIGURES)]
    totals = sums.sum(min_count=1)
    present = sums.count()
    n_children = eligible.set_index(parent_key)["n_children"]
    # A figure missing on any child cannot be summed; leave it out rather than guess.
    totals = totals.where(present.eq(n_children.reindex(present.index), axis=0))
    children_long = (
        totals.reset_index()
        .melt(id_vars=parent_key, var_name="figure", value_name="children_sum")
        .rename(columns={"parent_id": "division_id"})
    )
    parents = turnout[[*DIVISION_KEY, *RECONCILED_FIGURES]].drop_duplicates(DIVISION_KEY)
    parents_long = parents.melt(id_vars=DIVISION_KEY, var_name="figure", value_name="parent_value")
    figures = children_long.merge(parents_long, on=[*DIVISION_KEY, "figure"])

    child_votes = keyed.merge(
        eligible_children[[*DIVISION_KEY, "parent_id", "n_children"]], on=DIVISION_KEY
    )
    vote_sums = (
        child_votes.groupby([*parent_key, "line_key"], sort=False)
        .agg(children_sum=("votes", "sum"), n_votes=("votes", "count"), n_children=("n_children", "first"))
        .reset_index()
    )
    vote_sums = vote_sums[vote_sums["n_votes"] == vote_sums["n_children"]].rename(
        columns={"parent_id": "division_id"}
    )
    parent_votes = keyed.loc[
        keyed["first_of_line"],
        [*LINE_KEY, "choice_position", "choice_name", "is_against_all", "votes"],
    ].rename(columns={"votes": "parent_value"})
    votes = vote_sums.merge(parent_votes, on=LINE_KEY)
    votes["figure"] = "votes"

    figures = figures.merge(
        eligible.rename(columns={"parent_id": "division_id"}), on=DIVISION_KEY, how="left"
    )
    return _figures_and_line_votes(
        figures,
        votes.drop(columns=["line_key", "n_votes"]),
        compared=("parent_value", "children_sum"),
        dtypes={"parent_value": "Int64", "children_sum": "Int64", "n_children": "Int64"},
    )


def revisions(
    turnout: pd.DataFrame, keyed: pd.DataFrame, previous: PreviousSnapshot
) -> pd.DataFrame:
    """W2: per division and cumulative figure (or line), the current and previous value.

    A line the previous snapshot showed that the division (still present) no longer
    lists counts as 0 now: an annulled precinct's results vanish from its page.
    """
    previous_keyed = with_line_keys(previous.results)
    current = turnout[[*DIVISION_KEY, *CUMULATIVE_FIGURES]].drop_duplicates(DIVISION_KEY)
    before = previous.turnout[
        [*DIVISION_KEY, "snapshot_id", *CUMULATIVE_FIGURES]
    ].drop_duplicates(DIVISION_KEY).rename(columns={"snapshot_id": "previous_snapshot_id"})
    figures = current.melt(id_vars=DIVISION_KEY, var_name="figure", value_name="current").merge(
        before.melt(
            id_vars=[*DIVISION_KEY, "previous_snapshot_id"], var_name="figure",
            value_name="previous",
        ),
        on=[*DIVISION_KEY, "figure"],
    )

    before_votes = previous_keyed.loc[
        previous_keyed["first_of_line"],
        [*LINE_KEY, "snapshot_id", "choice_position", "choice_name", "is_against_all", "votes"],
    ].rename(
        columns={"votes": "previous", "snapshot_id": "previous_snapshot_id"}
    )
    now_votes = keyed.loc[keyed["first_of_line"], [*LINE_KEY, "votes"]]
    votes = before_votes.merge(now_votes, on=LINE_KEY, how="left").rename(
        columns={"votes": "current"}
    )
    division_present = votes.set_index(DIVISION_KEY).index.isin(
        current.set_index(DIVISION_KEY).index
    )
    votes = votes[division_present]
    votes["current"] = votes["current"].fillna(0)
    votes["figure"] = "votes"
    return _figures_and_line_votes(
        figures,
        votes.drop(columns=["line_key"]),
        compared=("current", "previous"),
        dtypes={"current": "Int64", "previous": "Int64", "previous_snapshot_id": "string"},
    )


def _figures_and_line_votes(
    figures: pd.DataFrame,
    votes: pd.DataFrame,
    compared: tuple[str, str],
    dtypes: dict[str, str],
) -> pd.DataFrame:
    """W1's and W2's rows: division figures (no ballot line) above per-line votes, typed.

    A row is kept only when both `compared` values are known: a comparison with a missing
    side is not made.
    """
    # Typed empty line columns (and a typed figure name), so the concatenation keeps
    # nullable dtypes instead of object columns re-parsed value by value afterwards.
    empty = pd.Series(pd.NA, index=figures.index)
    figures = figures.assign(
        figure=figures["figure"].astype("string"),
        choice_position=empty.astype("Int64"),
        choice_name=empty.astype("string"),
        is_against_all=empty.astype("boolean"),
    )
    votes = votes.assign(figure=pd.Series("votes", index=votes.index, dtype="string"))
    frame = pd.concat([figures, votes], ignore_index=True)
    first, second = compared
    frame = frame[frame[first].notna() & frame[second].notna()]
    return _typed_long(
        frame,
        {
            "contest_id": "string",
            "division_id": "string",
            "figure": "string",
            "choice_position": "Int64",
            "choice_name": "string",
            "is_against_all": "boolean",
            **dtypes,
        },
    )


def _root_shares(
    roots: pd.DataFrame, turnout: pd.DataFrame, results: pd.DataFrame
) -> pd.DataFrame:
    """Each contest root's lines with their share of ballots cast and the protocol count."""
    at_root = results.merge(roots, on=DIVISION_KEY)
    keyed = keyed_results(at_root, turnout)
    figures = turnout[[*DIVISION_KEY, "precincts_counted", "precincts_total"]].drop_duplicates(
        DIVISION_KEY
    )
    keyed = keyed.merge(figures, on=DIVISION_KEY, how="left")
    # The computed share is what the count says; the published one may carry C4's errors.
    computed = keyed["votes"].astype("Float64") / keyed["ballots_cast"].where(
        keyed["ballots_cast"] > 0
    ).astype("Float64") * 100
    keyed["share"] = computed.fillna(keyed["pct_published"])
    return keyed[
        [*LINE_KEY, "choice_position", "choice_name", "is_against_all", "share",
         "precincts_counted", "precincts_total"]
    ].drop_duplicates(LINE_KEY)


def swings(
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    results: pd.DataFrame,
    previous: PreviousSnapshot,
    min_progress_pp: float,
) -> pd.DataFrame:
    """W4: per contest root line whose snapshot added few protocols, its share change.

    Lines are kept when fewer than `min_progress_pp` % of the protocols were added, or
    when the protocol counts are not published (the move cannot be explained then).
    """
    roots = divisions.loc[divisions["parent_id"].isna(), DIVISION_KEY].drop_duplicates()
    now = _root_shares(roots, turnout, results)
    before = _root_shares(roots, previous.turnout, previous.results)
    frame = now.merge(
        before[[*LINE_KEY, "share", "precincts_counted"]],
        on=LINE_KEY,
        suffixes=("", "_previous"),
    )
    frame = frame.rename(columns={"share": "share_now", "precincts_counted": "precincts_counted_now"})
    frame["share_change_pp"] = (frame["share_now"] - frame["share_previous"]).round(4)
    frame["share_change_pp_abs"] = frame["share_change_pp"].abs()
    total = frame["precincts_total"].where(frame["precincts_total"] > 0).astype("Float64")
    frame["precincts_added_pp"] = (
        (frame["precincts_counted_now"] - frame["precincts_counted_previous"]).astype("Float64")
        / total
        * 100
    ).round(4)
    few_added = (frame["precincts_added_pp"] < min_progress_pp).fillna(True)
    frame = frame[few_added & frame["share_change_pp"].notna()].drop(columns=["line_key"])
    return frame.reset_index(drop=True)


def failure_division(url: str, contest_id: str | None) -> str:
    """The division a failed page belongs to: its URL segment after the contest.

    A contest's root page (or the election page) has no division segment; its row then
    carries the URL's path so that it is never mistaken for a summary row.
    """
    segments = [s for s in urlsplit(url).path.split("/") if s]
    if contest_id and contest_id in segments:
        after = segments[segments.index(contest_id) + 1 :]
        if after:
            return after[0]
    return urlsplit(url).path or url


def coverage(
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    meta: dict[str, Any],
    previous: PreviousSnapshot | None,
) -> pd.DataFrame:
    """W3: one row per division and per problem found, with a state ('ok' when fine)."""
    columns = [*DIVISION_KEY, "coverage_state", "detail", "status"]
    parts: list[pd.DataFrame] = []

    failures = pd.DataFrame(
        meta.get("failures") or [], columns=["url", "reason", "status", "contest_id"]
    )
    failed_contests: set[str] = set()
    if len(failures):
        contest = failures["contest_id"].astype("string")
        contest = contest.fillna(failures["url"].map(lambda url: _contest_from_url(url, meta)))
        failed = pd.DataFrame(
            {
                "contest_id": contest,
                "division_id": [
                    failure_division(url, c if isinstance(c, str) else None)
                    for url, c in zip(failures["url"], contest, strict=True)
                ],
                "coverage_state": "page_failed",
                "detail": failures["url"].astype(str) + " — " + failures["reason"].astype(str),
                "status": failures["status"].astype("Int64"),
            }
        )
        parts.append(failed)
        failed_contests = {str(c) for c in failed["contest_id"].dropna()}

    listed = divisions[DIVISION_KEY].drop_duplicates()
    with_page = listed.merge(
        turnout[DIVISION_KEY].drop_duplicates(), on=DIVISION_KEY, how="left", indicator="page"
    )
    parts.append(
        with_page.assign(
            coverage_state=np.where(with_page.pop("page") == "both", "ok", "no_page"),
            detail=pd.NA,
            status=pd.NA,
        )
    )

    children = divisions.loc[divisions["parent_id"].notna(), [*DIVISION_KEY, "parent_id"]]
    parent_index = children.set_index(["contest_id", "parent_id"]).index
    orphans = children[~parent_index.isin(listed.set_index(DIVISION_KEY).index)]
    if len(orphans):
        parts.append(
            pd.DataFrame(
                {
                    "contest_id": orphans["contest_id"],
                    "division_id": orphans["parent_id"],
                    "coverage_state": "parent_missing",
                    "detail": "linked by nothing parsed; child " + orphans["division_id"].astype("string"),
                    "status": pd.NA,
                }
            ).drop_duplicates(DIVISION_KEY)
        )

    with_root = set(divisions.loc[divisions["parent_id"].isna(), "contest_id"].dropna())
    present_contests = set(divisions["contest_id"].dropna())
    rootless = sorted(present_contests - with_root)
    missing = sorted(set(_listed_contests(meta)) - present_contests - failed_contests)
    for states, state in ((rootless, "root_missing"), (missing, "contest_missing")):
        if states:
            parts.append(
                pd.DataFrame(
                    {
                        "contest_id": states,
                        "division_id": [f"({state.split('_')[0]})" for _ in states],
                        "coverage_state": state,
                        "detail": pd.NA,
                        "status": pd.NA,
                    }
                )
            )

    if previous is not None:
        before = previous.turnout[[*DIVISION_KEY, "snapshot_id"]].drop_duplicates(DIVISION_KEY)
        gone = before[
            ~before.set_index(DIVISION_KEY).index.isin(listed.set_index(DIVISION_KEY).index)
        ]
        gone = gone[gone["contest_id"].isin(list(present_contests))]
        if len(gone):
            parts.append(
                gone.rename(columns={"snapshot_id": "detail"}).assign(
                    coverage_state="disappeared", status=pd.NA
                )
            )

    frame = pd.concat([p[columns] for p in parts], ignore_index=True)
    # A page that failed is reported once, with the failure's reason.
    failed_keys = frame.loc[frame["coverage_state"] == "page_failed", DIVISION_KEY]
    is_failed = frame.set_index(DIVISION_KEY).index.isin(failed_keys.set_index(DIVISION_KEY).index)
    frame = frame[~is_failed | (frame["coverage_state"] == "page_failed")]
    return _typed_long(
        frame,
        {
            "contest_id": "string",
            "division_id": "string",
            "coverage_state": "string",
            "detail": "string",
            "status": "Int64",
        },
    )


def number_cells(divisions: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """C5: one row per division with the count cells that held a fraction (0 when none).

    A fraction in a count is an impossible number, but an integer column cannot carry it:
    the parser leaves the figure missing and lists the cell in `snapshot.json`
    (`fractional_counts`), and this frame makes it a C5 failure of its division.
    """
    columns = [*DIVISION_KEY, "fractional_counts", "detail"]
    cells = pd.DataFrame(meta.get("fractional_counts") or [],
                         columns=["contest_id", "division_id", "url", "figure", "text"])
    base = divisions[DIVISION_KEY].drop_duplicates().astype("string")
    if not len(cells):
        frame = base.assign(fractional_counts=0, detail="")
    else:
        cells = cells.astype({"contest_id": "string", "division_id": "string"})
        cells["detail"] = cells["figure"].astype(str) + " = " + cells["text"].astype(str)
        per_division = cells.groupby(DIVISION_KEY, as_index=False).agg(
            fractional_counts=("detail", "size"), detail=("detail", "; ".join))
        frame = base.merge(per_division, on=DIVISION_KEY, how="outer")
        frame["fractional_counts"] = frame["fractional_counts"].fillna(0)
        frame["detail"] = frame["detail"].fillna("")
    frame = frame.astype({"fractional_counts": "Int64"})
    return frame[columns].reset_index(drop=True)


def contests_with_failures(meta: dict[str, Any]) -> frozenset[str]:
    """Contests that lost at least one page in this snapshot."""
    return frozenset(
        str(f["contest_id"]) for f in meta.get("failures") or [] if f.get("contest_id")
    )


def _listed_contests(meta: dict[str, Any]) -> list[str]:
    contests: list[str] = []
    for contest in meta.get("contests") or []:
        if isinstance(contest, str):
            contests.append(contest)
        elif isinstance(contest, dict):
            value = contest.get("contest_id") or contest.get("id")
            if value:
                contests.append(str(value))
    return contests


def _contest_from_url(url: str, meta: dict[str, Any]) -> str | None:
    segments = [s for s in urlsplit(url).path.split("/") if s]
    for contest in _listed_contests(meta):
        if contest in segments:
            return contest
    return None


def _typed_long(frame: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """Cast a concatenated long frame to stable nullable dtypes, with a fresh index."""
    frame = frame.reset_index(drop=True)
    for column, dtype in dtypes.items():
        if column not in frame.columns:
            frame[column] = pd.NA
        frame[column] = frame[column].astype(dtype)
    return frame
