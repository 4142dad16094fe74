"""Derived frames the suites validate: one row per check instance, built with pandas.

Great Expectations validates one row at a time; the rules of an election page are about
groups (a division's lines, a parent's children). Each function here turns the
normalised frames into a frame whose rows are the units a rule speaks about, with the
columns the expectations under `expectations/` name. All of it is vectorised (groupby,
merge, array lookups): no Python loop runs per row.

Joins and groupings run on integer codes (`with_keys`), not on the string keys: at
100,000 precincts (2 M result rows, twice with a previous snapshot) hashing pyarrow
strings in every merge cost most of the gate's time and memory. Each code stands for
exactly one key (missing values included, as pandas' merges match them), so every join
and grouping pairs the same rows, in the same order, as on the strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

DIVISION_KEY = ["contest_id", "division_id"]
LINE_KEY = [*DIVISION_KEY, "line_key"]
AGAINST_ALL_KEY = "against_all"
# Integer codes (`with_keys`): a division (contest, division), its parent (contest,
# parent), a division's ballot line, a contest's ballot line, and the dense line code
# the last two are built from.
DIV = "div_key"
PARENT = "parent_key"
PAIR = "pair_key"
CONTEST_LINE = "contest_line_key"
LINE_DENSE = "line_dense"
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
_LINE_COLUMNS = [
    "contest_id", "line_key", "choice_position", "choice_name", "is_against_all",
    CONTEST_LINE, LINE_DENSE,
]


@dataclass(frozen=True)
class PreviousSnapshot:
    """The previous published snapshot's turnout and results, for W2, W3 and W4.

    From the warehouse it may mix snapshots (each contest's latest published one), so
    every comparison takes the snapshot id from the previous row it compares with.
    """

    turnout: pd.DataFrame
    results: pd.DataFrame


@dataclass(frozen=True)
class KeyedFrames:
    """The gate's input frames with integer key columns shared by all of them."""

    divisions: pd.DataFrame
    turnout: pd.DataFrame
    results: pd.DataFrame
    previous: PreviousSnapshot | None
    n_lines: int


@dataclass(frozen=True)
class Revisions:
    """W2's frame and how many comparisons it stands for per contest.

    Comparisons whose value did not change are made (counted) but left out of `frame`:
    `current >= previous` holds for them by construction.
    """

    frame: pd.DataFrame
    compared: dict[str, int]


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


def _joint_codes(parts: Sequence[pd.Series]) -> tuple[list[np.ndarray], int]:
    """Codes of the values of several columns in one vocabulary (missing is a value).

    Each column is factorised on its own (Arrow's dictionary encoding, no copy of the
    strings), then only the distinct values are factorised together.
    """
    factorised = [pd.factorize(part.array) for part in parts]
    joined = pd.concat([pd.Series(uniques) for _, uniques in factorised], ignore_index=True)
    vocabulary_codes, vocabulary = pd.factorize(joined.array)
    missing = len(vocabulary)  # the code of a missing value
    codes = []
    start = 0
    for part_codes, uniques in factorised:
        mapped = np.append(vocabulary_codes[start : start + len(uniques)], missing)
        start += len(uniques)
        codes.append(mapped[part_codes].astype(np.int64))
    return codes, missing + 1


def _dense(parts: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Integer codes of several arrays renumbered 0..n-1 in one vocabulary."""
    joined = np.concatenate(parts)
    low = int(joined.min()) if len(joined) else 0
    span = int(joined.max()) - low + 1 if len(joined) else 0
    if span <= 4 * len(joined) + 1024:
        # Codes from a small range (the usual case): mark and rank them, no hashing.
        seen = np.zeros(span, dtype=bool)
        seen[joined - low] = True
        codes = (np.cumsum(seen) - 1)[joined - low]
        uniques = np.flatnonzero(seen)
    else:
        codes, uniques = pd.factorize(joined)
    bounds = np.cumsum([0, *(len(p) for p in parts)])
    return [codes[a:b].astype(np.int64) for a, b in pairwise(bounds)], len(uniques)


def with_keys(
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    results: pd.DataFrame,
    previous: PreviousSnapshot | None,
) -> KeyedFrames:
    """The frames with integer keys: `div_key` everywhere, `parent_key` on divisions;
    on results `name_key`, `line_key` (an integer), `pair_key` (division × line),
    `contest_line_key` (contest × line) and `line_dense`.

    The previous snapshot is coded in the same vocabulary, so keys compare across the two.
    """
    sources = [divisions, turnout, results]
    if previous is not None:
        sources += [previous.turnout, previous.results]
    contest_parts = [f["contest_id"] for f in sources] + [divisions["contest_id"]]
    division_parts = [f["division_id"] for f in sources] + [divisions["parent_id"]]
    contests, _ = _joint_codes(contest_parts)
    division_ids, n_division_ids = _joint_codes(division_parts)
    raw = [c * n_division_ids + d for c, d in zip(contests, division_ids, strict=True)]
    div_keys, _ = _dense(raw)

    results_frames = [results] + ([previous.results] if previous is not None else [])
    result_contests = [contests[2]] + ([contests[4]] if previous is not None else [])
    result_divs = [div_keys[2]] + ([div_keys[4]] if previous is not None else [])
    against_all = [f["is_against_all"].fillna(False).to_numpy(dtype=bool) for f in results_frames]
    by_name = [
        f["choice_position"].isna().to_numpy() & ~aa
        for f, aa in zip(results_frames, against_all, strict=True)
    ]
    # The previous snapshot's names matter only for lines keyed by name (C6 is current).
    names = [name_key(results["choice_name"])] + [
        name_key(f["choice_name"][mask]) for f, mask in zip(results_frames[1:], by_name[1:],
                                                            strict=True)
    ]
    # A line is its ballot number; against all (no number) is its own line; a numberless
    # line that is not against all (a parse oddity) is keyed by its normalised name (a
    # missing name being the empty one) so it still counts as one line. Numbers are at
    # least `base`, against all is `base - 1`, names are below that.
    minimum = [f["choice_position"].min() for f in results_frames]
    base = min([0, *(int(m) for m in minimum if not pd.isna(m))])
    name_codes, _ = _joint_codes(
        [names[0][by_name[0]].fillna("")] + [n.fillna("") for n in names[1:]]
    )
    lines = []
    for frame, aa, mask, codes in zip(results_frames, against_all, by_name, name_codes,
                                      strict=True):
        line = frame["choice_position"].to_numpy(dtype=np.int64, na_value=0).copy()
        line[aa] = base - 1
        line[mask] = base - 2 - codes
        lines.append(line)
    dense, n_lines = _dense(lines)

    keyed_results = [
        results.assign(
            name_key=names[0],
            line_key=lines[0],
            **{
                DIV: result_divs[0],
                LINE_DENSE: dense[0],
                PAIR: result_divs[0] * n_lines + dense[0],
                CONTEST_LINE: result_contests[0] * n_lines + dense[0],
            },
        )
    ]
    keyed_previous = None
    if previous is not None:
        keyed_previous = PreviousSnapshot(
            turnout=previous.turnout.assign(**{DIV: div_keys[3]}),
            results=previous.results.assign(
                line_key=lines[1],
                **{DIV: result_divs[1], PAIR: result_divs[1] * n_lines + dense[1]},
            ),
        )
    return KeyedFrames(
        divisions=divisions.assign(**{DIV: div_keys[0], PARENT: div_keys[-1]}),
        turnout=turnout.assign(**{DIV: div_keys[1]}),
        results=keyed_results[0],
        previous=keyed_previous,
        n_lines=n_lines,
    )


def _first_rows(frame: pd.DataFrame, key: str = DIV) -> np.ndarray:
    """Positions of the first row of each key (what drop_duplicates keeps)."""
    return np.flatnonzero(~frame[key].duplicated().to_numpy())


def _positions(keys: Any, source_keys: Any) -> np.ndarray:
    """For each key, the position of that (unique) key in `source_keys`, or -1."""
    return pd.Index(np.asarray(source_keys)).get_indexer(np.asarray(keys))


def _through(first: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Positions `first[found]`, -1 where `found` is -1."""
    out = np.full(len(found), -1, dtype=np.int64)
    hit = found >= 0
    out[hit] = first[found[hit]]
    return out


def _take(column: pd.Series, positions: np.ndarray) -> Any:
    """`column`'s values at `positions` (missing where -1), as an array of its dtype."""
    return column.array.take(positions, allow_fill=True)


def _with_key_present(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose contest and division are known: pandas' groupby leaves the others out."""
    known = frame["contest_id"].notna() & frame["division_id"].notna()
    return frame if bool(known.all()) else frame[known]


def with_line_keys(results: pd.DataFrame) -> pd.DataFrame:
    """Keyed results (see `with_keys`) with `first_of_line`: the first row of each line."""
    # One pass over the keys; every "first row of each line" below reuses it.
    return results.assign(first_of_line=~results[PAIR].duplicated())


def keyed_results(results: pd.DataFrame, turnout: pd.DataFrame) -> pd.DataFrame:
    """Results with line and name keys, the division's ballots cast and the C4 formula."""
    keyed = with_line_keys(results)
    first = _first_rows(turnout)
    keyed["ballots_cast"] = _take(
        turnout["ballots_cast"].iloc[first], _positions(keyed[DIV], turnout[DIV].iloc[first])
    )
    positive_cast = keyed["ballots_cast"].where(keyed["ballots_cast"] > 0)
    keyed["pct_expected"] = (
        (keyed["votes"].astype("Float64") / positive_cast.astype("Float64") * 100).round(2)
    )
    # Rounded so that float noise (0.010000000000002) never decides a failure.
    keyed["pct_deviation"] = (keyed["pct_published"] - keyed["pct_expected"]).abs().round(6)
    return keyed


def division_pct_sums(results: pd.DataFrame, tolerance_per_line: float) -> pd.DataFrame:
    """C1: per division, the sum of its lines' published percentages and its limit."""
    published = _with_key_present(
        results.loc[results["pct_published"].notna(), [*DIVISION_KEY, DIV, "pct_published"]]
    )
    grouped = published.groupby(DIV, sort=False)["pct_published"].agg(
        pct_sum="sum", n_lines="size"
    )
    first = published.iloc[_first_rows(published)]
    sums = pd.DataFrame(
        {
            "contest_id": first["contest_id"].to_numpy(),
            "division_id": first["division_id"].to_numpy(),
            "pct_sum": grouped["pct_sum"].array,
            "n_lines": grouped["n_lines"].to_numpy(),
        }
    ).astype({"contest_id": "string", "division_id": "string"})
    sums["pct_sum"] = sums["pct_sum"].astype("Float64").round(2)
    sums["n_lines"] = sums["n_lines"].astype("Int64")
    sums["pct_limit"] = (100 + tolerance_per_line * sums["n_lines"].astype("Float64")).round(4)
    return sums


def contest_lines(divisions: pd.DataFrame, keyed: pd.DataFrame) -> pd.DataFrame:
    """The ballot lines of each contest: those its root page lists.

    A contest whose root lists no lines (root not yet counted, or not parsed) falls back
    to every line any of its divisions lists, so C2 still compares divisions.
    """
    roots = divisions.loc[divisions["parent_id"].isna(), DIV].unique()
    root_lines = keyed.loc[keyed[DIV].isin(roots), _LINE_COLUMNS]
    fallback = keyed.loc[~keyed["contest_id"].isin(root_lines["contest_id"]), _LINE_COLUMNS]
    lines = pd.concat([root_lines, fallback], ignore_index=True)
    return (
        lines.drop_duplicates(["contest_id", "line_key"])
        .sort_values(["contest_id", "choice_position"], na_position="last", kind="stable")
        .reset_index(drop=True)
    )


def line_coverage(
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    keyed: pd.DataFrame,
    lines: pd.DataFrame,
    n_lines: int,
) -> pd.DataFrame:
    """C2: one row per (counted division, ballot line of its contest) with what was found.

    The root defines the contest's lines, so a line the root itself dropped is found by
    its divisions: a counted root is also expected to list every line they list.
    """
    counted = turnout.loc[
        turnout["precincts_counted"].fillna(0) > 0,
        [*DIVISION_KEY, DIV, "precincts_counted", "precincts_total"],
    ]
    counted = counted.iloc[_first_rows(counted)]
    expected = counted.merge(lines, on="contest_id")

    listed = keyed[keyed["first_of_line"]]
    on_root = listed[CONTEST_LINE].isin(lines[CONTEST_LINE]).to_numpy()
    if not on_root.all():
        elsewhere = (
            listed[~on_root]
            .groupby(["contest_id", "line_key"], sort=False)
            .agg(
                choice_position=("choice_position", "first"),
                choice_name=("choice_name", "first"),
                is_against_all=("is_against_all", "first"),
                listed_by=("division_id", "size"),
                **{LINE_DENSE: (LINE_DENSE, "first")},
            )
            .reset_index()
        )
        roots = divisions.loc[divisions["parent_id"].isna(), [*DIVISION_KEY, DIV]]
        roots = roots.iloc[_first_rows(roots)].drop(columns=DIV)
        expected = pd.concat(
            [expected, counted.merge(roots, on=DIVISION_KEY).merge(elsewhere, on="contest_id")],
            ignore_index=True,
        )
    first = np.flatnonzero(keyed["first_of_line"].to_numpy())
    wanted = expected[DIV].to_numpy() * n_lines + expected[LINE_DENSE].to_numpy(dtype=np.int64)
    found = _positions(wanted, keyed[PAIR].to_numpy()[first])
    at = _through(first, found)
    frame = expected.assign(
        votes=_take(keyed["votes"], at),
        pct_published=_take(keyed["pct_published"], at),
        row_present=pd.array(found >= 0, dtype="boolean"),
    )
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
    rows = _with_key_present(keyed[["contest_id", "division_id", DIV, "votes", "line_key"]])
    per_division = rows.groupby(DIV, sort=False).agg(
        lines_votes_sum=("votes", "sum"),
        n_rows=("votes", "size"),
        n_votes=("votes", "count"),
        n_line_keys=("line_key", "nunique"),
    )
    first_contest = rows["contest_id"].iloc[_first_rows(rows)].to_numpy()
    n_expected = lines.groupby("contest_id").size()
    expected_lines = n_expected.reindex(first_contest).to_numpy(dtype="float64", na_value=0)
    complete = (
        (per_division["n_votes"] == per_division["n_rows"])
        & (per_division["n_rows"] == per_division["n_line_keys"])
        & (per_division["n_line_keys"].to_numpy() >= expected_lines)
    )
    lines_votes_sum = per_division["lines_votes_sum"].astype("Int64").where(complete, pd.NA)
    frame = turnout[[*DIVISION_KEY, DIV, "ballots_cast", "invalid", "valid", "precincts_counted"]]
    frame = frame.iloc[_first_rows(frame)].reset_index(drop=True)
    at = _positions(frame[DIV], per_division.index)
    frame["lines_votes_sum"] = pd.array(_take(lines_votes_sum, at), dtype="Int64")
    frame["n_rows"] = pd.api.extensions.take(
        per_division["n_rows"].to_numpy(dtype="float64"), at, allow_fill=True
    )
    frame["votes_plus_invalid"] = frame["lines_votes_sum"] + frame["invalid"]
    frame["valid_plus_invalid"] = frame["valid"] + frame["invalid"]
    # Without an invalid figure the lines can still be held against the valid ballots.
    frame["lines_votes_sum_if_no_invalid"] = frame["lines_votes_sum"].where(
        frame["invalid"].isna(), pd.NA
    )
    return frame


def _children_state(divisions: pd.DataFrame, turnout: pd.DataFrame) -> pd.DataFrame:
    """Each child division with whether its page is present and fully counted."""
    children = divisions.loc[
        divisions["parent_id"].notna(), [*DIVISION_KEY, "parent_id", DIV, PARENT]
    ]
    children = children.iloc[_first_rows(children)].reset_index(drop=True)
    first = _first_rows(turnout)
    at = _positions(children[DIV], turnout[DIV].iloc[first])
    at = _through(first, at)
    state = children.assign(
        **{figure: _take(turnout[figure], at) for figure in RECONCILED_FIGURES}
    )
    state["complete"] = (
        (at >= 0)
        & (state["precincts_total"].notna())
        & (state["precincts_counted"] == state["precincts_total"]).fillna(False)
    )
    return state


def reconciliation(
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    keyed: pd.DataFrame,
    n_lines: int,
    skip_contests: Iterable[str] = (),
) -> pd.DataFrame:
    """W1: per parent and figure (or line), the parent's value and its children's sum.

    Only parents whose children are all present and fully counted are compared, so a
    snapshot taken while the portal updates in place does not raise false warnings.
    """
    state = _children_state(divisions, turnout)
    state = state[~state["contest_id"].isin(list(skip_contests)) & state["contest_id"].notna()]
    parent_key = ["contest_id", "parent_id"]
    groups = state.groupby(PARENT, sort=False)
    eligible = groups["complete"].agg(n_children="size", n_complete="sum")
    first = state.iloc[_first_rows(state, PARENT)]
    eligible = eligible.assign(
        contest_id=first["contest_id"].to_numpy(), parent_id=first["parent_id"].to_numpy()
    ).reset_index()
    eligible = eligible[eligible["n_children"] == eligible["n_complete"]][
        [*parent_key, PARENT, "n_children"]
    ].reset_index(drop=True)
    at = _positions(state[PARENT], eligible[PARENT])
    eligible_children = state[at >= 0].assign(
        n_children=eligible["n_children"].to_numpy()[at[at >= 0]]
    )

    sums = eligible_children.groupby(PARENT, sort=False)[list(RECONCILED_FIGURES)]
    totals = sums.sum(min_count=1)
    present = sums.count()
    n_children = eligible.set_index(PARENT)["n_children"]
    # A figure missing on any child cannot be summed; leave it out rather than guess.
    totals = totals.where(present.eq(n_children.reindex(present.index), axis=0))
    named = eligible.set_index(PARENT).reindex(totals.index)
    totals = totals.assign(contest_id=named["contest_id"].to_numpy(),
                           parent_id=named["parent_id"].to_numpy())
    children_long = (
        totals.reset_index(drop=True)
        .melt(id_vars=parent_key, var_name="figure", value_name="children_sum")
        .rename(columns={"parent_id": "division_id"})
    )
    parents = turnout[[*DIVISION_KEY, DIV, *RECONCILED_FIGURES]]
    parents = parents.iloc[_first_rows(parents)]
    parents = parents[parents[DIV].isin(eligible[PARENT])].drop(columns=DIV)
    parents_long = parents.melt(id_vars=DIVISION_KEY, var_name="figure", value_name="parent_value")
    figures = children_long.merge(parents_long, on=[*DIVISION_KEY, "figure"])

    # Each child's result rows, grouped by (parent, line) through integer codes: the
    # group is the parent's own pair key (a parent is a division of the same contest).
    child_at = _positions(keyed[DIV], eligible_children[DIV])
    rows = np.flatnonzero(child_at >= 0)
    parent_codes = eligible_children[PARENT].to_numpy()[child_at[rows]]
    child_votes = pd.DataFrame(
        {
            "group": parent_codes * n_lines + keyed[LINE_DENSE].to_numpy()[rows],
            "votes": keyed["votes"].array.take(rows),
        }
    )
    del child_at, rows, parent_codes
    vote_sums = child_votes.groupby("group", sort=False)["votes"].agg(
        children_sum="sum", n_votes="count"
    )
    del child_votes
    group_parent = vote_sums.index.to_numpy() // n_lines
    by_parent = _positions(group_parent, eligible[PARENT])
    n_group_children = eligible["n_children"].to_numpy()[by_parent]
    first_line = np.flatnonzero(keyed["first_of_line"].to_numpy())
    parent_at = _positions(vote_sums.index, keyed[PAIR].to_numpy()[first_line])
    kept = (vote_sums["n_votes"].to_numpy() == n_group_children) & (parent_at >= 0)
    parent_row = first_line[parent_at[kept]]
    by_parent = by_parent[kept]
    votes = pd.DataFrame(
        {
            "contest_id": eligible["contest_id"].array.take(by_parent),
            "division_id": eligible["parent_id"].array.take(by_parent),
            "children_sum": vote_sums["children_sum"].array[kept],
            "n_children": n_group_children[kept],
            "choice_position": keyed["choice_position"].array.take(parent_row),
            "choice_name": keyed["choice_name"].array.take(parent_row),
            "is_against_all": keyed["is_against_all"].array.take(parent_row),
            "parent_value": keyed["votes"].array.take(parent_row),
            "figure": "votes",
        }
    )

    figures = figures.merge(
        eligible.drop(columns=PARENT).rename(columns={"parent_id": "division_id"}),
        on=DIVISION_KEY, how="left",
    )
    return _figures_and_line_votes(
        figures,
        votes,
        compared=("parent_value", "children_sum"),
        dtypes={"parent_value": "Int64", "children_sum": "Int64", "n_children": "Int64"},
    )


def counts_per_contest(contests: pd.Series) -> dict[str, int]:
    """How many rows each contest has, given the rows' `contest_id`s (missing ones left out):
    what a check compared, per contest."""
    return {str(c): int(n) for c, n in contests.value_counts(dropna=True).items()}


def revisions(
    turnout: pd.DataFrame,
    keyed: pd.DataFrame,
    previous: PreviousSnapshot,
    *,
    leave_out_unchanged: bool = True,
) -> Revisions:
    """W2: per division and cumulative figure (or line), the current and previous value.

    A line the previous snapshot showed that the division (still present) no longer
    lists counts as 0 now: an annulled precinct's results vanish from its page. With
    `leave_out_unchanged`, comparisons of a value with itself are counted in `compared`
    but not put in the frame (only valid for a `current >= previous` rule).
    """
    current = turnout[[*DIVISION_KEY, DIV, *CUMULATIVE_FIGURES]]
    current = current.iloc[_first_rows(current)].reset_index(drop=True)
    before = previous.turnout[[*DIVISION_KEY, DIV, "snapshot_id", *CUMULATIVE_FIGURES]]
    before = before.iloc[_first_rows(before)].reset_index(drop=True)
    at = _positions(current[DIV], before[DIV])
    matched = np.flatnonzero(at >= 0)
    before_at = at[matched]
    figure_parts = []
    for figure in CUMULATIVE_FIGURES:
        figure_parts.append(
            pd.DataFrame(
                {
                    "contest_id": current["contest_id"].array.take(matched),
                    "division_id": current["division_id"].array.take(matched),
                    "figure": figure,
                    "current": current[figure].array.take(matched),
                    "previous_snapshot_id": before["snapshot_id"].array.take(before_at),
                    "previous": before[figure].array.take(before_at),
                }
            )
        )
    figures = pd.concat(figure_parts, ignore_index=True)

    previous_keyed = with_line_keys(previous.results)
    first = np.flatnonzero(previous_keyed["first_of_line"].to_numpy())
    present = previous.results[DIV].iloc[first].isin(current[DIV]).to_numpy()
    rows = first[present]
    now_first = np.flatnonzero(keyed["first_of_line"].to_numpy())
    now = _positions(previous.results[PAIR].to_numpy()[rows], keyed[PAIR].to_numpy()[now_first])
    now = _through(now_first, now)
    previous_votes = previous.results["votes"].array.take(rows)
    current_votes = pd.array(keyed["votes"].array.take(now, allow_fill=True), dtype="Int64")
    current_votes = current_votes.fillna(0)
    kept_figures = figures["current"].notna() & figures["previous"].notna()
    kept_votes = ~pd.isna(previous_votes)
    contests = pd.concat(
        [figures.loc[kept_figures, "contest_id"],
         pd.Series(previous.results["contest_id"].array.take(rows[kept_votes]))],
        ignore_index=True,
    )
    compared = counts_per_contest(contests)
    if leave_out_unchanged:
        kept_figures &= (figures["current"] != figures["previous"]).fillna(False)
        kept_votes &= (current_votes != previous_votes).fillna(False).to_numpy(dtype=bool)
    picked = rows[kept_votes]
    votes = pd.DataFrame(
        {
            "contest_id": previous.results["contest_id"].array.take(picked),
            "division_id": previous.results["division_id"].array.take(picked),
            "previous_snapshot_id": previous.results["snapshot_id"].array.take(picked),
            "choice_position": previous.results["choice_position"].array.take(picked),
            "choice_name": previous.results["choice_name"].array.take(picked),
            "is_against_all": previous.results["is_against_all"].array.take(picked),
            "previous": previous_votes[kept_votes],
            "current": current_votes[kept_votes],
        }
    )
    frame = _figures_and_line_votes(
        figures[kept_figures],
        votes,
        compared=("current", "previous"),
        dtypes={"current": "Int64", "previous": "Int64", "previous_snapshot_id": "string"},
    )
    return Revisions(frame, compared)


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
    at_root = results[results[DIV].isin(roots[DIV])]
    keyed = keyed_results(at_root, turnout)
    figures = turnout[[*DIVISION_KEY, DIV, "precincts_counted", "precincts_total"]]
    figures = figures.iloc[_first_rows(figures)]
    figures = figures[figures[DIV].isin(roots[DIV])].drop(columns=DIV)
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
    roots = divisions.loc[divisions["parent_id"].isna(), [*DIVISION_KEY, DIV]]
    roots = roots.iloc[_first_rows(roots)]
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
