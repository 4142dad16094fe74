"""What the report shows, read from what the pipeline left: the cycle log, the snapshots, the warehouse.

Sources (nothing here writes to them):
- `cycles.jsonl`: one line per run (portal state, contest statuses, alerts sent);
- the staged snapshot directories (published and quarantined alike: the frames and
  `dq_results.parquet` exactly as checked); when one is gone, the warehouse's tables, which
  keep every snapshot's rows, quarantined included;
- the warehouse's `snapshot_contests` for each contest's current status (a reprocess may
  have changed it since the run);
- the raw archive, for the archived page behind each failing division.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl import config
from etl.crawl import contest_path
from etl.elections import ContestRules, ElectionRules, load_election
from etl.normalise import SnapshotDirError, read_snapshot_frames, read_snapshot_meta
from etl.report.forensics import PrecinctCounts
from etl.schema import DQ_RESULTS

log = logging.getLogger(__name__)

PUBLISHED, QUARANTINED, FAILED = "published", "quarantined", "failed"


@dataclass(frozen=True)
class Run:
    """One run of the night, as the index lists it."""

    number: int
    checked_at: str
    portal: str  # changed / unchanged / unavailable
    snapshot_id: str | None
    portal_updated_at: str | None
    statuses: dict[str, str]
    reason: str | None
    alerts: tuple[str, ...]

    @property
    def status(self) -> str:
        """published / quarantined / failed / unavailable / unchanged (the worst contest wins)."""
        if self.portal != "changed":
            return self.portal
        values = set(self.statuses.values())
        for status in (QUARANTINED, FAILED):
            if status in values:
                return status
        return PUBLISHED if values else FAILED

    @property
    def status_detail(self) -> str:
        """`36 published, 1 quarantined`, or the portal state."""
        if self.portal != "changed":
            return self.portal
        values = list(self.statuses.values())
        return ", ".join(f"{values.count(s)} {s}" for s in (PUBLISHED, QUARANTINED, FAILED)
                         if values.count(s)) or "no contest"


def read_runs(election_id: str, cycles_path: Path | None = None) -> list[Run]:
    """The runs of one election from the cycle log, in the order they ran."""
    path = cycles_path or config.data_dir() / "cycles.jsonl"
    runs: list[Run] = []
    if not path.exists():
        return runs
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("election_id") != election_id:
            continue
        alerts = tuple(f"{a['kind']} {a.get('contest_id') or 'portal'}"
                       for a in record.get("alerts", []))
        runs.append(Run(
            number=len(runs) + 1, checked_at=record["checked_at"], portal=record["portal"],
            snapshot_id=record.get("snapshot_id"), portal_updated_at=record.get("portal_updated_at"),
            statuses={c: s["status"] for c, s in (record.get("statuses") or {}).items()},
            reason=record.get("reason"), alerts=alerts))
    return runs


def warehouse_statuses(warehouse_url: str, election_id: str) -> dict[str, dict[str, tuple[str, str | None]]]:
    """snapshot id → contest → (status, reason), as the warehouse holds them now."""
    from etl.warehouse.backends import connect

    with connect(warehouse_url) as db:
        rows = db.query(
            "SELECT c.snapshot_id, c.contest_id, c.status, c.reason FROM snapshot_contests c "
            "JOIN snapshots s USING (snapshot_id) WHERE s.election_id = ?", [election_id])
    statuses: dict[str, dict[str, tuple[str, str | None]]] = {}
    for snapshot_id, contest_id, status, reason in rows:
        statuses.setdefault(snapshot_id, {})[contest_id] = (status, reason)
    return statuses


@dataclass(frozen=True)
class Snapshot:
    """One snapshot's frames and metadata, wherever they were read from."""

    snapshot_id: str
    election_id: str
    meta: dict[str, Any]
    divisions: pd.DataFrame
    turnout: pd.DataFrame
    results: pd.DataFrame
    dq_results: pd.DataFrame
    source: str  # where the frames came from (a directory or the warehouse)
    page_urls: dict[str, str] = field(default_factory=dict)  # url → sha256 of the archived body


def staged_snapshot_dir(election_id: str, snapshot_id: str) -> Path:
    """Where `etl.cycle.assemble_snapshot` stages a snapshot."""
    return config.staging_dir() / election_id / "snapshots" / snapshot_id


def read_snapshot(election_id: str, snapshot_id: str, warehouse_url: str | None) -> Snapshot:
    """The staged snapshot directory, else the snapshot's rows in the warehouse."""
    directory = staged_snapshot_dir(election_id, snapshot_id)
    try:
        meta = read_snapshot_meta(directory)
        frames = read_snapshot_frames(directory)
        dq_path = directory / "dq_results.parquet"
        dq_results = pd.read_parquet(dq_path) if dq_path.exists() else _empty_dq()
        pages = {p["url"]: p["sha256"] for p in meta.get("pages", []) if p.get("sha256")}
        return Snapshot(snapshot_id, election_id, meta, frames["divisions"], frames["turnout"],
                        frames["results"], dq_results, str(directory), pages)
    except SnapshotDirError as exc:
        if warehouse_url is None:
            raise
        log.info("snapshot %s not staged (%s): reading the warehouse", snapshot_id, exc)
    return _warehouse_snapshot(election_id, snapshot_id, warehouse_url)


def _empty_dq() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in DQ_RESULTS.items()})


def _warehouse_snapshot(election_id: str, snapshot_id: str, warehouse_url: str) -> Snapshot:
    from etl.warehouse.backends import connect, redact

    with connect(warehouse_url) as db:
        head = db.query_frame("SELECT * FROM snapshots WHERE snapshot_id = ?", [snapshot_id])
        if head.empty:
            raise LookupError(f"snapshot {snapshot_id} is neither staged nor in {redact(warehouse_url)}")
        # The versioned tables hold a row once, under the snapshot that first showed it:
        # "as of snapshot X" is the `*_by_snapshot` views (etl/warehouse/README.md).
        frames = {table: db.query_frame(f"SELECT * FROM {source} WHERE snapshot_id = ?",
                                        [snapshot_id])
                  for table, source in (("divisions", "divisions_by_snapshot"),
                                        ("turnout", "turnout_by_snapshot"),
                                        ("results", "results_by_snapshot"),
                                        ("dq_results", "dq_results"))}
    meta = {key: (str(value) if value is not None else None)
            for key, value in head.iloc[0].to_dict().items()}
    if "line_no" in frames["results"].columns:
        frames["results"] = frames["results"].sort_values(["contest_id", "division_id", "line_no"])
    return Snapshot(snapshot_id, election_id, meta, frames["divisions"], frames["turnout"],
                    frames["results"], frames["dq_results"], redact(warehouse_url))


def main_contest(rules: ElectionRules | None, contests: list[str]) -> str | None:
    """The contest the report leads with: the party list (the first party-list contest)."""
    if rules is not None:
        for contest in contests:
            try:
                if rules.contest(contest).kind == "party_list":
                    return contest
            except KeyError:
                continue
    return sorted(contests)[0] if contests else None


def election_rules(election_id: str) -> ElectionRules | None:
    """The election's rule file, or None (the report then shows no threshold and no seats)."""
    try:
        return load_election(election_id)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("no usable rule file for %s (%s): no threshold or seats in the report",
                    election_id, exc)
        return None


@dataclass(frozen=True)
class Contest:
    """One contest of a snapshot, with its root and first-level divisions picked out."""

    contest_id: str
    divisions: pd.DataFrame
    turnout: pd.DataFrame
    results: pd.DataFrame
    root_id: str | None

    @classmethod
    def of(cls, snapshot: Snapshot, contest_id: str) -> Contest:
        """The frames of `contest_id` in `snapshot`."""
        divisions = snapshot.divisions[snapshot.divisions["contest_id"] == contest_id]
        roots = divisions.loc[divisions["parent_id"].isna(), "division_id"].tolist()
        return cls(contest_id, divisions,
                   snapshot.turnout[snapshot.turnout["contest_id"] == contest_id],
                   snapshot.results[snapshot.results["contest_id"] == contest_id],
                   str(roots[0]) if len(roots) == 1 else None)

    def lines(self, division_id: str | None) -> pd.DataFrame:
        """The ballot lines of one division, in the page's order."""
        if division_id is None:
            return self.results.iloc[0:0]
        return self.results[self.results["division_id"] == division_id]

    def figures(self, division_id: str | None) -> dict[str, Any]:
        """The turnout row of one division as a dict (empty when missing)."""
        if division_id is None:
            return {}
        rows = self.turnout[self.turnout["division_id"] == division_id]
        return {} if rows.empty else {k: _plain(v) for k, v in rows.iloc[0].to_dict().items()}

    def national(self) -> NationalFigures:
        """Counted %, the parties' published % sum and the lines of the root division."""
        figures = self.figures(self.root_id)
        lines = self.lines(self.root_id)
        counted, total = figures.get("precincts_counted"), figures.get("precincts_total")
        parties = lines.loc[~lines["is_against_all"].astype(bool), "pct_published"].dropna()
        return NationalFigures(
            counted_pct=counted / total * 100 if counted is not None and total else None,
            parties_pct=float(parties.sum()) if len(parties) else None,
            ballots_cast=figures.get("ballots_cast"), valid=figures.get("valid"),
            registered=figures.get("registered"))

    def children(self, division_id: str | None) -> pd.DataFrame:
        """Divisions directly under `division_id`, in the portal's order."""
        return self.divisions[self.divisions["parent_id"] == division_id]

    def precinct_counts(self) -> PrecinctCounts:
        """Counted leaf divisions (precincts) as arrays for the forensic signals."""
        parents = set(self.divisions["parent_id"].dropna())
        leaves = self.divisions.loc[~self.divisions["division_id"].isin(parents), "division_id"]
        turnout = self.turnout[self.turnout["division_id"].isin(leaves)].dropna(
            subset=["registered", "ballots_cast"])
        turnout = turnout[turnout["ballots_cast"] > 0]
        results = self.results[self.results["division_id"].isin(turnout["division_id"])]
        results = results.assign(line=results["choice_name"].fillna("against all").astype(str))
        votes = results.pivot_table(index="division_id", columns="line", values="votes",
                                    aggfunc="sum", fill_value=0, observed=True)
        votes = votes.reindex(turnout["division_id"]).fillna(0)
        return PrecinctCounts(turnout["registered"].to_numpy(dtype=np.int64),
                              turnout["ballots_cast"].to_numpy(dtype=np.int64),
                              votes.to_numpy(dtype=np.int64), tuple(str(c) for c in votes.columns))


@dataclass(frozen=True)
class NationalFigures:
    """The contest root's headline figures."""

    counted_pct: float | None
    parties_pct: float | None
    ballots_cast: int | None
    valid: int | None
    registered: int | None


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def division_url(portal: str, lang: str, election_id: str, contest_id: str,
                 division_id: str, is_root: bool) -> str:
    """The portal page of a division (the contest's root page for its root)."""
    path = contest_path(lang, election_id, contest_id)
    return portal.rstrip("/") + (path if is_root else f"{path}{division_id}/")


def contest_rules(rules: ElectionRules | None, contest_id: str) -> ContestRules | None:
    """A contest's rules, or None without a rule file for it."""
    if rules is None:
        return None
    try:
        return rules.contest(contest_id)
    except KeyError:
        return None
