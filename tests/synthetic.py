"""The synthetic-election generator of the tests and benchmarks, and single corruptions.

One generator, `make_consistent_election`: a party list (country → region → district →
precinct) and single-mandate constituencies over the same precincts, at any size (the
100,000-precinct load benchmark scales it up). The numbers follow the protocol: lines +
against all + invalid = ballots cast, percentages are votes / ballots cast × 100 rounded to
two decimals, parents are the sums of their children. `warehouse_snapshot` adds what the
loader needs (the gate's all-clear `dq_results`, portal and fetch times).

Used by the property tests of the gate (`corrupt`: one corruption must make its check
fail), the warehouse tests (`tests/snapshot_factory.py`) and `bench/` (which imports it as
`tests.synthetic`: benchmarks run from the repository root, where `tests/` is a namespace
package). Not part of the `etl` package: production never generates elections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl import schema
from etl.normalise import SnapshotFrames, write_snapshot
from etl.quality.catalog import CHECKS

ELECTION_ID = "synthetic"
AGAINST_ALL = "Против всех"
CORRUPTIONS = (
    "double_pct",
    "inflate_sum",
    "drop_row",
    "blank_cell",
    "break_identity",
    "negative_count",
    "cast_over_issued",
    "duplicate_candidate",
)
# The check each corruption must trip.
CORRUPTION_CHECK = {
    "double_pct": "C4",
    "inflate_sum": "C1",
    "drop_row": "C2",
    "blank_cell": "C2",
    "break_identity": "C3",
    "negative_count": "C5",
    "cast_over_issued": "C5",
    "duplicate_candidate": "C6",
}


@dataclass(frozen=True)
class SyntheticSnapshot:
    """One snapshot's frames, `snapshot.json` metadata and (if validated) `dq_results`."""

    divisions: pd.DataFrame
    turnout: pd.DataFrame
    results: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    dq_results: pd.DataFrame | None = None

    @property
    def snapshot_id(self) -> str:
        """The snapshot's id."""
        return str(self.meta["snapshot_id"])

    def write(self, out_dir: Path) -> Path:
        """Write it as a snapshot directory: the three parquet files and snapshot.json, and
        `dq_results.parquet` when the snapshot carries quality results."""
        from etl.quality.gate import DQ_RESULTS_FILE, write_dq_results

        write_snapshot(
            out_dir, SnapshotFrames(self.divisions, self.turnout, self.results), self.meta
        )
        if self.dq_results is not None:
            write_dq_results(self.dq_results.astype(schema.DQ_RESULTS), out_dir / DQ_RESULTS_FILE)
        return out_dir


@dataclass(frozen=True)
class Corruption:
    """Where a corruption was applied: the check that must fail, and the place it names."""

    kind: str
    check_id: str
    contest_id: str
    division_id: str
    choice_position: int | None


@dataclass(frozen=True)
class _Contest:
    contest_id: str
    root_name: str
    lines: Sequence[tuple[int | None, str]]
    # division_id -> (parent_id, level, name); precincts are the leaves
    tree: dict[str, tuple[str | None, str, str]]
    precincts: list[str]


def make_consistent_election(
    seed: int,
    *,
    n_lines: int = 21,
    regions: int = 3,
    districts_per_region: int = 2,
    precincts_per_district: int = 4,
    okrugs: int = 0,
    candidates_per_okrug: int = 5,
    counted_fraction: float = 1.0,
    invalid_share: float = 0.09,
    against_all_wins: bool = False,
    election_id: str = ELECTION_ID,
    snapshot_id: str | None = None,
    okrug_root_ids: bool = False,
) -> SyntheticSnapshot:
    """A consistent election: a party `list` (country → region → district → precinct) and
    `okrugs` single-mandate contests (constituency → precinct) over the same precincts.

    The same seed with a larger `counted_fraction` is a later snapshot of the same night:
    counted precincts stay counted with the same figures, so nothing goes down. With
    `okrug_root_ids` a constituency's root division is named like the contest (`okrug-1`,
    as on the CEC portal) rather than `o1`.
    """
    rng = np.random.default_rng(seed)
    snapshot_id = snapshot_id or f"{election_id}-{seed}-{round(counted_fraction * 1000):04d}"
    precinct_ids: list[str] = []
    list_tree: dict[str, tuple[str | None, str, str]] = {"0": (None, "country", "Республика")}
    for r in range(1, regions + 1):
        region = f"r{r}"
        list_tree[region] = ("0", "region", f"Область {r}")
        for d in range(1, districts_per_region + 1):
            district = f"r{r}d{d}"
            list_tree[district] = (region, "district", f"Район {r}-{d}")
            for p in range(1, precincts_per_district + 1):
                precinct = f"{r}{d:02d}{p:03d}"
                list_tree[precinct] = (district, "precinct", f"УИК №{precinct}")
                precinct_ids.append(precinct)
    parties = [(i, f"«Партия {i}»") for i in range(1, n_lines + 1)]
    contests = [_Contest("list", "Республика", parties, list_tree, precinct_ids)]
    for k in range(1, okrugs + 1):
        members = precinct_ids[k - 1 :: okrugs]
        if not members:
            continue
        root = f"okrug-{k}" if okrug_root_ids else f"o{k}"
        tree: dict[str, tuple[str | None, str, str]] = {
            root: (None, "constituency", f"Округ №{k}")
        }
        tree.update({p: (root, "precinct", f"УИК №{p}") for p in members})
        candidates = [(i, f"Кандидат {k}-{i}") for i in range(1, candidates_per_okrug + 1)]
        contests.append(_Contest(f"okrug-{k}", f"Округ №{k}", candidates, tree, members))

    n = len(precinct_ids)
    registered = rng.integers(400, 3000, size=n)
    issued = np.floor(registered * rng.uniform(0.2, 0.6, size=n)).astype(np.int64)
    cast = issued - rng.integers(0, 4, size=n).clip(max=issued)
    invalid = np.floor(cast * rng.uniform(0, 2 * invalid_share, size=n)).astype(np.int64)
    # Precincts are counted in a fixed random order, so a later snapshot extends an earlier.
    rank = rng.permutation(n)
    counted = rank < round(counted_fraction * n)
    # Every precinct's protocol is drawn whether or not it is counted yet, so that the
    # random stream (and so each precinct's figures) is the same in every snapshot.
    figures = pd.DataFrame(
        {
            "division_id": precinct_ids,
            "registered": registered,
            "ballots_issued": issued,
            "ballots_cast": cast,
            "invalid": invalid,
            "valid": cast - invalid,
            "precincts_counted": counted.astype(np.int64),
            "precincts_total": 1,
        }
    )

    div_rows: list[dict[str, Any]] = []
    turnout_parts: list[pd.DataFrame] = []
    result_parts: list[pd.DataFrame] = []
    drawn = [(c, _precinct_votes(rng, c, figures, against_all_wins)) for c in contests]
    # An uncounted precinct shows zeros (and, below, an empty results table).
    figures.loc[~counted, ["ballots_issued", "ballots_cast", "invalid", "valid"]] = 0
    counted_by_id = figures.set_index("division_id")["precincts_counted"]
    for contest, drawn_votes in drawn:
        votes = drawn_votes * counted_by_id.loc[contest.precincts].to_numpy()[:, None]
        turnout, results = _aggregate(contest, figures, votes)
        turnout_parts.append(turnout)
        result_parts.append(results)
        div_rows += [
            {"contest_id": contest.contest_id, "division_id": d, "parent_id": parent,
             "level": level, "name": name}
            for d, (parent, level, name) in contest.tree.items()
        ]
    base = {"snapshot_id": snapshot_id, "election_id": election_id}
    divisions = pd.DataFrame(div_rows).assign(**base)
    turnout = pd.concat(turnout_parts, ignore_index=True).assign(**base)
    results = pd.concat(result_parts, ignore_index=True).assign(**base)
    meta = {
        "snapshot_id": snapshot_id,
        "election_id": election_id,
        "contests": [c.contest_id for c in contests],
        "portal_updated_at": f"2021-11-28T{20 + int(counted_fraction * 3):02d}:00:00+06:00",
        "fetched_at": "2021-11-28T15:00:00+00:00",
        "pages_fetched": len(divisions),
        "pages_not_modified": 0,
        "pages_failed": 0,
        "failures": [],
        "pages": [],
    }
    return SyntheticSnapshot(
        divisions=divisions[list(schema.DIVISIONS)].astype(schema.DIVISIONS),
        turnout=turnout[list(schema.TURNOUT)].astype(schema.TURNOUT),
        results=results[list(schema.RESULTS)].astype(schema.RESULTS),
        meta=meta,
    )




def warehouse_snapshot(
    snapshot_id: str,
    *,
    portal_updated_at: datetime | None = datetime(2021, 11, 28, 21, 30, tzinfo=UTC),
    election_id: str = "jk2021",
    regions: int = 10,
    districts_per_region: int = 5,
    precincts_per_district: int = 50,
    okrugs: int = 36,
    candidates_per_okrug: int = 2,
    counted: float = 1.0,
    seed: int = 0,
) -> SyntheticSnapshot:
    """A loadable snapshot of `make_consistent_election` (kg2021's size by default: 2,500
    precincts, 21 parties, 36 constituencies) with the gate's all-clear results and times
    (fetched 40 s after the portal's time)."""
    election = make_consistent_election(
        seed, regions=regions, districts_per_region=districts_per_region,
        precincts_per_district=precincts_per_district, okrugs=okrugs,
        candidates_per_okrug=candidates_per_okrug, counted_fraction=counted,
        election_id=election_id, snapshot_id=snapshot_id, okrug_root_ids=True,
    )
    contest_ids = list(election.meta["contests"])
    dq_results = pd.DataFrame(
        [
            {"snapshot_id": snapshot_id, "check_id": check, "severity": severity,
             "success": True, "contest_id": contest_id, "division_id": None,
             "choice_position": None, "observed": "0", "expected": "0",
             "message": f"{check}: no finding"}
            for contest_id in contest_ids
            # Every catalog check, as the publishing audit expects of a validated snapshot.
            for check, severity in ((c.check_id, c.severity) for c in CHECKS)
        ],
        columns=list(schema.DQ_RESULTS),
    ).astype(schema.DQ_RESULTS)
    fetched = (portal_updated_at or datetime(2021, 11, 28, 21, 0, tzinfo=UTC)) + timedelta(
        seconds=40
    )
    meta = {
        **election.meta,
        "portal": "http://127.0.0.1:8765",
        "lang": "ru",
        "portal_updated_at": portal_updated_at.isoformat() if portal_updated_at else None,
        "fetched_at": fetched.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    return replace(election, meta=meta, dq_results=dq_results)


def _precinct_votes(
    rng: np.random.Generator, contest: _Contest, figures: pd.DataFrame, against_all_wins: bool
) -> np.ndarray:
    """Votes of each line (against all last) per precinct of the contest: sum = valid."""
    valid = figures.set_index("division_id").loc[contest.precincts, "valid"].to_numpy()
    n_lines = len(contest.lines) + 1
    weights = rng.dirichlet(np.full(n_lines, 2.0))
    if against_all_wins and contest.contest_id != "list":
        weights[-1] = weights.max() * 2
        weights /= weights.sum()
    else:
        weights[-1] = min(weights[-1], 0.03)
        weights /= weights.sum()
    return np.stack([rng.multinomial(v, weights) for v in valid])


def _aggregate(
    contest: _Contest, figures: pd.DataFrame, votes: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turnout and results rows of every division of a contest, summed up the tree."""
    leaf = figures.set_index("division_id").loc[contest.precincts].reset_index()
    line_columns = [f"line{i}" for i in range(votes.shape[1])]
    leaf[line_columns] = votes
    # Each precinct contributes to itself and every ancestor.
    rows = []
    for precinct in contest.precincts:
        node: str | None = precinct
        while node is not None:
            rows.append((precinct, node))
            node = contest.tree[node][0]
    ancestry = pd.DataFrame(rows, columns=["precinct", "division_id"])
    summed = (
        ancestry.merge(leaf.rename(columns={"division_id": "precinct"}), on="precinct")
        .drop(columns="precinct")
        .groupby("division_id", sort=False)
        .sum()
        .reset_index()
    )
    summed["turnout_pct_published"] = (summed["ballots_cast"] / summed["registered"] * 100).round(2)
    turnout = summed.drop(columns=line_columns).assign(contest_id=contest.contest_id)

    lines = [*contest.lines, (None, AGAINST_ALL)]
    long = summed.melt(
        id_vars=["division_id", "ballots_cast", "precincts_counted"],
        value_vars=line_columns, var_name="line", value_name="votes",
    )
    # An uncounted division shows an empty results table.
    long = long[long["precincts_counted"] > 0].copy()
    index = long["line"].str.slice(4).astype(int)
    long["choice_position"] = [lines[i][0] for i in index]
    long["choice_name"] = [lines[i][1] for i in index]
    long["is_against_all"] = long["choice_position"].isna()
    share = long["votes"] / long["ballots_cast"].where(long["ballots_cast"] > 0) * 100
    long["pct_computed"] = share
    long["pct_published"] = share.round(2)
    results = long.drop(columns=["line", "ballots_cast", "precincts_counted"]).assign(
        contest_id=contest.contest_id
    )
    results["choice_position"] = results["choice_position"].astype("Int64")
    return turnout, results


def corrupt(
    snapshot: SyntheticSnapshot, kind: str, seed: int
) -> tuple[SyntheticSnapshot, Corruption]:
    """Apply one corruption of `kind` at a random counted division; say where it is."""
    rng = np.random.default_rng(seed)
    turnout, results = snapshot.turnout.copy(), snapshot.results.copy()
    counted = turnout[(turnout["ballots_cast"] > 0) & (turnout["precincts_counted"] > 0)]
    if counted.empty:
        raise ValueError("no counted division to corrupt")
    target = counted.iloc[int(rng.integers(len(counted)))]
    contest, division = str(target["contest_id"]), str(target["division_id"])
    in_division = (results["contest_id"] == contest) & (results["division_id"] == division)
    parties = results[in_division & ~results["is_against_all"]]
    line = parties.index[int(rng.integers(len(parties)))]
    position = int(results.at[line, "choice_position"])
    at_turnout = (turnout["contest_id"] == contest) & (turnout["division_id"] == division)
    where: int | None = position

    if kind == "double_pct":
        # A line with at least 0.02% so that doubling is visible after rounding.
        visible = parties[parties["pct_published"] >= 0.02]
        if len(visible):
            line = visible.index[int(rng.integers(len(visible)))]
            where = int(results.at[line, "choice_position"])
        results.loc[line, "pct_published"] = results.at[line, "pct_published"] * 2 + 0.02
    elif kind == "inflate_sum":
        # Scale the division's percentages to sum to 130-160% (the 2021 incident's range),
        # whatever the invalid share; spread evenly when every line has 0%.
        published = results.loc[in_division, "pct_published"].astype(float)
        target = float(rng.uniform(130, 160))
        total = float(published.sum())
        scaled = published * (target / total) if total > 0 else target / len(published)
        results.loc[in_division, "pct_published"] = pd.Series(scaled, index=published.index).round(2)
        where = None
    elif kind == "drop_row":
        results = results.drop(index=line)
    elif kind == "blank_cell":
        column = "votes" if rng.integers(2) else "pct_published"
        results.loc[line, column] = pd.NA
    elif kind == "break_identity":
        turnout.loc[at_turnout, "invalid"] = turnout.loc[at_turnout, "invalid"] + 1 + int(
            rng.integers(50)
        )
        where = None
    elif kind == "negative_count":
        results.loc[line, "votes"] = -1 - int(rng.integers(100))
    elif kind == "cast_over_issued":
        turnout.loc[at_turnout, "ballots_issued"] = turnout.loc[at_turnout, "ballots_cast"] - 1
        where = None
    elif kind == "duplicate_candidate":
        copy = results.loc[[line]].copy()
        copy["choice_position"] = results["choice_position"].max() + 1
        results = pd.concat([results, copy], ignore_index=True)
    else:
        raise ValueError(f"unknown corruption {kind!r} (known: {', '.join(CORRUPTIONS)})")
    corrupted = replace(snapshot, turnout=turnout.reset_index(drop=True),
                        results=results.reset_index(drop=True))
    return corrupted, Corruption(kind, CORRUPTION_CHECK[kind], contest, division, where)
