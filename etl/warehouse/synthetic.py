"""Synthetic snapshot directories of election-night size, for the load benchmark and tests.

The shape follows kg2021: a party list (country → regions → district commissions →
precincts, 21 parties and against-all) and single-mandate constituencies (constituency →
its precincts). Votes are random around the preliminary shares of FACTS.md, summed upwards
so every division adds up; `counted` says which share of the precincts has reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl import schema
from etl.quality.catalog import CHECKS

# FACTS.md, preliminary count of 28 November: ballot number -> (name, % of ballots cast).
PARTIES: dict[int, tuple[str, float]] = {
    1: ("«Ата-Мекен»", 3.48), 2: ("«Бүтүн Кыргызстан»", 6.74), 3: ("«Альянс»", 8.23),
    4: ("«Легализация»", 0.62), 5: ("«Ыйман Нуру»", 6.01), 6: ("«Күчтүү регион»", 0.62),
    7: ("«Багыт»", 0.95), 8: ("«Ынтымак»", 10.81), 9: ("«Ишеним»", 13.50),
    10: ("«Азаттык»", 4.01), 11: ("«Мекенчил Эл»", 1.54), 12: ("«Жашыл партия»", 0.41),
    13: ("«Жашасын Кыргызстан»", 0.44), 14: ("«Социал-демократтар»", 3.21),
    15: ("«Аруузат-Эл Куту»", 0.46), 16: ("«Патриоттук биримдик партиясы»", 0.96),
    17: ("«Улуттар биримдиги»", 2.48), 18: ("«Эл Үмүтү»", 4.46), 19: ("«Ордо»", 0.46),
    20: ("«Улуу-Журт»", 0.71), 21: ("«Ата-Журт Кыргызстан»", 16.86),
}
AGAINST_ALL = ("Против всех", 2.17)


@dataclass(frozen=True)
class SyntheticSnapshot:
    """Frames (columns per `etl.schema`) and the `snapshot.json` of one synthetic snapshot."""

    meta: dict[str, Any]
    divisions: pd.DataFrame
    turnout: pd.DataFrame
    results: pd.DataFrame
    dq_results: pd.DataFrame

    def write(self, out_dir: Path) -> Path:
        """Write it as a snapshot directory (see `write_snapshot_dir`)."""
        return write_snapshot_dir(
            out_dir, self.meta, self.divisions, self.turnout, self.results, self.dq_results
        )


def write_snapshot_dir(
    out_dir: Path,
    meta: dict[str, Any],
    divisions: pd.DataFrame,
    turnout: pd.DataFrame,
    results: pd.DataFrame,
    dq_results: pd.DataFrame,
) -> Path:
    """Write frames, `dq_results.parquet` and `snapshot.json` into `out_dir`."""
    from etl.normalise import SnapshotFrames, write_snapshot
    from etl.quality.gate import DQ_RESULTS_FILE, write_dq_results

    frames = SnapshotFrames(
        divisions=divisions.astype(schema.DIVISIONS),
        turnout=turnout.astype(schema.TURNOUT),
        results=results.astype(schema.RESULTS),
    )
    write_snapshot(out_dir, frames, meta)
    write_dq_results(dq_results.astype(schema.DQ_RESULTS), out_dir / DQ_RESULTS_FILE)
    return out_dir


def synthetic_snapshot(
    snapshot_id: str = "jk2021-synthetic",
    *,
    election_id: str = "jk2021",
    portal_updated_at: datetime | None = datetime(2021, 11, 28, 21, 30, tzinfo=UTC),
    precincts: int = 2494,
    abroad: int = 59,
    regions: int = 10,
    districts_per_region: int = 5,
    okrugs: int = 36,
    okrug_candidates: int = 2,
    counted: float = 1.0,
    seed: int = 0,
) -> SyntheticSnapshot:
    """A consistent snapshot: precinct votes summed to districts, regions and the root."""
    if precincts - abroad < okrugs:
        raise ValueError("every constituency needs a precinct: precincts - abroad >= okrugs")
    rng = np.random.default_rng(seed)
    reported = np.arange(precincts) < round(counted * precincts)
    home = precincts - abroad
    # Party list: root "0", regions "r<i>" (plus "abroad"), districts "r<i>-d<j>".
    region_of = [f"r{i % regions}" for i in range(home)] + ["abroad"] * abroad
    district_of = [
        f"{region_of[i]}-d{(i // regions) % districts_per_region}" if i < home else "abroad-d0"
        for i in range(precincts)
    ]
    shares = np.array([pct for _, pct in PARTIES.values()] + [AGAINST_ALL[1]]) / 100
    cast = rng.integers(300, 900, precincts) * reported
    votes = np.stack([rng.multinomial(n, np.append(shares, 1 - shares.sum())) for n in cast])
    line_votes, invalid = votes[:, :-1], votes[:, -1]
    names = [name for name, _ in PARTIES.values()] + [AGAINST_ALL[0]]
    positions: list[int | None] = [*PARTIES, None]

    precinct_ids = [f"{1000 + i}" for i in range(precincts)]
    list_frame = pd.DataFrame(
        {"division_id": precinct_ids, "district": district_of, "region": region_of,
         "counted": reported.astype(int), "total": 1, "cast": cast, "invalid": invalid}
    )
    for j in range(len(names)):
        list_frame[f"v{j}"] = line_votes[:, j]
    contests = [_contest_frames(
        list_frame, [("region", "0"), ("district", "region")], "list", "0",
        "Кыргызская Республика", names, positions)]

    home_frame = list_frame.iloc[:home].copy()
    home_frame["okrug"] = [f"okrug-{i % okrugs + 1}" for i in range(home)]
    for okrug in range(1, okrugs + 1):
        contest_id = f"okrug-{okrug}"
        rows = home_frame[home_frame["okrug"] == contest_id]
        # Re-use the precinct's list turnout; split its valid votes among the candidates.
        candidate_names = [f"Кандидат {contest_id}-{k}" for k in range(1, okrug_candidates + 1)]
        valid = rows[[f"v{j}" for j in range(len(names))]].sum(axis=1).to_numpy()
        weights = rng.dirichlet(np.ones(okrug_candidates + 1), len(rows))
        split = (weights * valid[:, None]).astype(int)
        okrug_frame = rows[["division_id", "counted", "total", "cast"]].copy()
        okrug_frame["invalid"] = rows["cast"].to_numpy() - split.sum(axis=1)
        for k in range(okrug_candidates + 1):
            okrug_frame[f"v{k}"] = split[:, k]
        contests.append(_contest_frames(
            okrug_frame, [], contest_id, contest_id, f"Избирательный округ №{okrug}",
            [*candidate_names, AGAINST_ALL[0]], [*range(1, okrug_candidates + 1), None]))

    divisions = pd.concat([c[0] for c in contests], ignore_index=True)
    turnout = pd.concat([c[1] for c in contests], ignore_index=True)
    results = pd.concat([c[2] for c in contests], ignore_index=True)
    for frame in (divisions, turnout, results):
        frame.insert(0, "election_id", election_id)
        frame.insert(0, "snapshot_id", snapshot_id)
    contest_ids = ["list", *(f"okrug-{i}" for i in range(1, okrugs + 1))]
    dq_results = pd.DataFrame(
        [
            {"snapshot_id": snapshot_id, "check_id": check, "severity": severity,
             "success": True, "contest_id": contest_id, "division_id": None,
             "choice_position": None, "observed": "0", "expected": "0",
             "message": f"{check}: no finding"}
            for contest_id in contest_ids
            for check, severity in ((c.check_id, c.severity) for c in CHECKS)
        ],
        columns=list(schema.DQ_RESULTS),
    )
    fetched = (portal_updated_at or datetime(2021, 11, 28, 21, 0, tzinfo=UTC)) + timedelta(
        seconds=40
    )
    meta = {
        "snapshot_id": snapshot_id,
        "election_id": election_id,
        "portal": "http://127.0.0.1:8765",
        "lang": "ru",
        "contests": contest_ids,
        "portal_updated_at": portal_updated_at.isoformat() if portal_updated_at else None,
        "fetched_at": fetched.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "pages_fetched": len(divisions) + 1,
        "pages_not_modified": 0,
        "pages_failed": 0,
        "failures": [],
        "pages": [],
    }
    return SyntheticSnapshot(
        meta,
        divisions.astype(schema.DIVISIONS),
        turnout.astype(schema.TURNOUT),
        results.astype(schema.RESULTS),
        dq_results.astype(schema.DQ_RESULTS),
    )


def _contest_frames(
    precincts: pd.DataFrame,
    levels: list[tuple[str, str]],
    contest_id: str,
    root_id: str,
    root_name: str,
    names: list[str],
    positions: list[int | None],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Divisions, turnout and results of one contest; `levels` are (column, parent column)."""
    sums = ["counted", "total", "cast", "invalid", *(f"v{j}" for j in range(len(names)))]
    parent = levels[-1][0] if levels else None
    tiers = []
    for column, parent_column in levels:
        tier = precincts.groupby(column, sort=True)[sums].sum().reset_index()
        tier = tier.rename(columns={column: "division_id"})
        if parent_column in precincts.columns:
            parents = precincts.groupby(column)[parent_column].first()
            tier["parent_id"] = tier["division_id"].map(parents)
        else:
            tier["parent_id"] = parent_column
        tier["level"] = "region" if parent_column == root_id else "district"
        tier["name"] = tier["division_id"]
        tiers.append(tier)
    root = precincts[sums].sum().to_frame().T
    root["division_id"], root["parent_id"], root["level"], root["name"] = (
        root_id, None, "country" if levels else "constituency", root_name)
    tiers.insert(0, root)
    tiers.append(precincts.assign(parent_id=precincts[parent] if parent else root_id,
                                  level="precinct", name="УИК №" + precincts["division_id"]))
    frame = pd.concat([t[["division_id", "parent_id", "level", "name", *sums]] for t in tiers],
                      ignore_index=True)
    frame["contest_id"] = contest_id
    valid = frame[[f"v{j}" for j in range(len(names))]].sum(axis=1)
    cast = valid + frame["invalid"]
    registered = (cast * 3 + 500).where(frame["total"] > 0)
    divisions = frame[["contest_id", "division_id", "parent_id", "level", "name"]]
    turnout = pd.DataFrame({
        "contest_id": contest_id, "division_id": frame["division_id"],
        "registered": registered, "ballots_issued": cast + 2, "ballots_cast": cast,
        "invalid": frame["invalid"], "valid": valid, "precincts_counted": frame["counted"],
        "precincts_total": frame["total"],
        "turnout_pct_published": (cast / registered * 100).round(2),
    })
    lines = []
    for j, (name, position) in enumerate(zip(names, positions, strict=True)):
        line_votes = frame[f"v{j}"]
        lines.append(pd.DataFrame({
            "contest_id": contest_id, "division_id": frame["division_id"], "order": j,
            "choice_position": position, "choice_name": name,
            "is_against_all": position is None, "votes": line_votes,
            "pct_published": (line_votes / cast.where(cast > 0) * 100).round(2),
            "pct_computed": line_votes / cast.where(cast > 0) * 100,
        }))
    results = pd.concat(lines, ignore_index=True)
    results["rank"] = results["division_id"].map({d: i for i, d in enumerate(frame["division_id"])})
    results = results.sort_values(["rank", "order"], kind="stable").drop(columns=["rank", "order"])
    return divisions, turnout, results.reset_index(drop=True)
