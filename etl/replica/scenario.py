"""The replica's scenario model: contests, divisions, a timeline of snapshots, ground truth.

A scenario is pure data, built deterministically from a seed with no I/O. Each snapshot
says which precincts are counted and whether by the automatic (night) or the manual
(recount) protocol; every division's figures are sums over its precincts, so pages are
consistent by construction. Incidents (doubled percentages, duplicates, withdrawn pages)
are flags on the snapshot that the renderer applies, not changes to the counts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np

NOT_COUNTED = 0
AUTOMATIC = 1
MANUAL = 2

# Columns of a contest's per-precinct count matrices; choice votes follow, then against-all.
COL_ISSUED = 0
COL_CAST = 1
COL_INVALID = 2
FIRST_CHOICE_COL = 3

MODE_RESULTS = "results"
MODE_MAINTENANCE = "maintenance"
MODE_UNAVAILABLE = "unavailable"
SUMS_CACHE_BYTES = 96 * 2**20  # cumulative tables kept per scenario (always at least one)


@dataclass(frozen=True)
class Choice:
    """A ballot line: its number on the ballot and its name as printed (Kyrgyz)."""

    position: int
    name: str


@dataclass(frozen=True)
class Division:
    """A node of a contest's hierarchy; its precincts are rows `start:stop` of the contest."""

    division_id: str
    level: str  # country | constituency | region | district | precinct
    name_ru: str
    name_kg: str
    parent_id: str | None
    children: tuple[str, ...]
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class Contest:
    """One contest of the election with its per-precinct automatic and manual counts.

    `automatic` and `manual` have one row per precinct row of the contest and columns
    ballots_issued, ballots_cast, invalid, the choices' votes in ballot order, against-all.
    """

    contest_id: str
    name_ru: str
    name_kg: str
    seats: int
    choices: tuple[Choice, ...]
    root_id: str
    divisions: Mapping[str, Division]
    precinct_rows: np.ndarray  # global precinct index of each contest row
    automatic: np.ndarray
    manual: np.ndarray

    def division_path(self, division_id: str) -> tuple[Division, ...]:
        """The divisions from the root down to `division_id` (the breadcrumb)."""
        path = []
        current: str | None = division_id
        while current is not None:
            division = self.divisions[current]
            path.append(division)
            current = division.parent_id
        return tuple(reversed(path))


@dataclass(frozen=True)
class DuplicateRow:
    """A results table that lists one choice twice (incident 5 of the SPEC)."""

    contest_id: str
    division_id: str
    position: int


@dataclass(frozen=True)
class Misprint:
    """One figure typed wrong into one page's results table (`synthetic` scenario's incident).

    The page shows `votes_shown` for ballot line `position` and the percentage computed from
    it, so the line's percentage looks right but the protocol no longer adds up.
    """

    contest_id: str
    division_id: str
    position: int
    votes_shown: int


@dataclass(frozen=True)
class Snapshot:
    """One state of the portal at a portal time, with the incident flags the pages show."""

    index: int
    label: str
    portal_time: datetime
    description: str
    mode: str  # results | maintenance (200 notice page) | unavailable (503)
    precincts_counted: int  # protocols in, of all precincts, before annulment
    precincts_recounted: int  # of those, replaced by the manual count
    annulled: frozenset[str]  # precinct ids whose results are annulled (shown uncounted)
    doubled_positions: frozenset[int]  # list positions whose published % is doubled
    duplicate: DuplicateRow | None
    retry_after: int | None = None  # for mode "unavailable"
    misprint: Misprint | None = None


def _page_flags(snapshot: Snapshot) -> tuple[object, ...]:
    """What of a snapshot, besides the figures and the page's own time, a division page
    shows (see `etl.replica.render`)."""
    return (snapshot.mode, snapshot.doubled_positions, snapshot.duplicate, snapshot.retry_after)


@dataclass(frozen=True)
class Tally:
    """A division's figures in one snapshot: sums over its counted precincts."""

    registered: int
    ballots_issued: int
    ballots_cast: int
    invalid: int
    votes: tuple[int, ...]  # in ballot order, parallel to Contest.choices
    against_all: int
    precincts_counted: int
    precincts_total: int

    @property
    def valid(self) -> int:
        """Valid ballots: the choices' votes plus against-all."""
        return self.ballots_cast - self.invalid

    @property
    def turnout_pct(self) -> float:
        """Turnout as published: ballots cast over all registered voters of the division."""
        return round(self.ballots_cast / self.registered * 100, 2) if self.registered else 0.0

    def pct(self, votes: int) -> float:
        """Published percentage of a choice: votes over ballots cast, two decimals."""
        return round(votes / self.ballots_cast * 100, 2) if self.ballots_cast else 0.0


class Scenario:
    """A synthesised election night: contests, the timeline and per-snapshot ground truth."""

    def __init__(
        self,
        *,
        scenario_id: str,
        seed: int,
        election_id: str,
        election_name_ru: str,
        election_name_kg: str,
        election_date: str,
        precinct_ids: tuple[str, ...],
        registered: np.ndarray,
        counting_order: np.ndarray,
        recount_order: np.ndarray,
        contests: Mapping[str, Contest],
        snapshots: tuple[Snapshot, ...],
        page_times_follow_changes: bool = False,
    ) -> None:
        self.scenario_id = scenario_id
        self.seed = seed
        self.election_id = election_id
        self.election_name_ru = election_name_ru
        self.election_name_kg = election_name_kg
        self.election_date = election_date
        self.precinct_ids = precinct_ids
        self.registered = registered
        self.contests = contests
        self.snapshots = snapshots
        # False: every division page shows the snapshot's time (kg2021, as in 2021). True:
        # a page shows the time its own figures last changed, so an update that touches 5%
        # of the precincts leaves the other pages byte for byte unchanged (ETag, 304).
        self.page_times_follow_changes = page_times_follow_changes
        self._change_sums: dict[tuple[int, str], np.ndarray] = {}
        # rank of each precinct in the order protocols arrive / are recounted by hand
        self._count_rank = np.empty(len(precinct_ids), dtype=np.int64)
        self._count_rank[counting_order] = np.arange(len(precinct_ids))
        self._recount_rank = np.full(len(precinct_ids), len(precinct_ids), dtype=np.int64)
        self._recount_rank[recount_order] = np.arange(len(recount_order))
        self._precinct_index = {pid: i for i, pid in enumerate(precinct_ids)}
        self._labels = {s.label: s.index for s in snapshots}
        # Cumulative sums per (counting state, contest), least recently used first; bounded
        # in bytes, because at 100,000 precincts one contest's table is ~20 MB.
        self._sums_cache: OrderedDict[tuple[int, int, frozenset[str], str], np.ndarray] = (
            OrderedDict()
        )

    def index_of(self, label: str) -> int:
        """The index of the snapshot with this label (KeyError if there is none)."""
        return self._labels[label]

    def resolve(self, at: int | str) -> int:
        """A snapshot index from an index, a label, or a negative index from the end."""
        if isinstance(at, str):
            if at.lstrip("-").isdigit():
                at = int(at)
            else:
                return self.index_of(at)
        index = at if at >= 0 else len(self.snapshots) + at
        if not 0 <= index < len(self.snapshots):
            raise IndexError(f"snapshot {at} out of range 0..{len(self.snapshots) - 1}")
        return index

    def index_at(self, when: datetime) -> int:
        """The snapshot the portal showed at portal time `when` (the first one before it)."""
        if when.tzinfo is None:
            raise ValueError("give an aware datetime, e.g. 2021-11-28T21:00:00+06:00")
        times = [s.portal_time for s in self.snapshots]
        return max(bisect_right(times, when) - 1, 0)

    def precinct_states(self, index: int) -> np.ndarray:
        """Per global precinct: NOT_COUNTED, AUTOMATIC or MANUAL in snapshot `index`."""
        snap = self.snapshots[index]
        states = np.where(self._count_rank < snap.precincts_counted, AUTOMATIC, NOT_COUNTED)
        states[self._recount_rank < snap.precincts_recounted] = MANUAL
        for precinct_id in snap.annulled:
            states[self._precinct_index[precinct_id]] = NOT_COUNTED
        return states.astype(np.int8)

    def _cumulative(self, index: int, contest_id: str) -> np.ndarray:
        """Cumulative sums over the contest's rows of [registered, counted, counts...]."""
        snap = self.snapshots[index]
        key = (snap.precincts_counted, snap.precincts_recounted, snap.annulled, contest_id)
        cached = self._sums_cache.get(key)
        if cached is not None:
            self._sums_cache.move_to_end(key)
            return cached
        contest = self.contests[contest_id]
        states = self.precinct_states(index)[contest.precinct_rows][:, None]
        counts = np.where(
            states == MANUAL, contest.manual, np.where(states == AUTOMATIC, contest.automatic, 0)
        )
        table = np.column_stack(
            (self.registered[contest.precinct_rows], states[:, 0] != NOT_COUNTED, counts)
        ).astype(np.int64)
        cumulative = np.vstack((np.zeros((1, table.shape[1]), np.int64), table.cumsum(axis=0)))
        self._sums_cache[key] = cumulative
        while (
            len(self._sums_cache) > 1
            and sum(a.nbytes for a in self._sums_cache.values()) > SUMS_CACHE_BYTES
        ):
            self._sums_cache.popitem(last=False)
        return cumulative

    def page_time(self, index: int, contest_id: str, division_id: str) -> datetime:
        """The `updated` time a division page shows in snapshot `index`.

        With `page_times_follow_changes`, the time of the last snapshot (up to `index`) in
        which one of the division's precincts changed state (counted, recounted, annulled)
        or the page showed or stopped showing a misprint; otherwise the snapshot's time.
        """
        if not self.page_times_follow_changes:
            return self.snapshots[index].portal_time
        return self.snapshots[self._last_change(index, contest_id, division_id)].portal_time

    def _last_change(self, index: int, contest_id: str, division_id: str) -> int:
        """The last snapshot, up to `index`, in which the division's figures changed."""
        division = self.contests[contest_id].divisions[division_id]
        j = index
        while j > 0:
            sums = self._changes(j, contest_id)
            if sums[division.stop] - sums[division.start] > 0:
                break
            if any(
                m is not None and m.contest_id == contest_id and m.division_id == division_id
                for m in (self.snapshots[j].misprint, self.snapshots[j - 1].misprint)
            ):
                break
            j -= 1
        return j

    def same_page_since(self, index: int, contest_id: str, division_id: str) -> int | None:
        """The first snapshot from which the division's page is the one snapshot `index`
        shows, byte for byte (with `page_times_follow_changes`; else None: every snapshot
        re-stamps every page). The page is the same while neither the division's figures
        (its own time with them) nor the incident flags a page shows change."""
        if not self.page_times_follow_changes:
            return None
        start = self._last_change(index, contest_id, division_id)
        flags = _page_flags(self.snapshots[index])
        for k in range(index, start, -1):
            if _page_flags(self.snapshots[k - 1]) != flags:
                return k
        return start

    def _changes(self, index: int, contest_id: str) -> np.ndarray:
        """Cumulative count over the contest's rows of precincts changed since `index - 1`."""
        key = (index, contest_id)
        sums = self._change_sums.get(key)
        if sums is None:
            rows = self.contests[contest_id].precinct_rows
            changed = self.precinct_states(index)[rows] != self.precinct_states(index - 1)[rows]
            sums = np.concatenate(([0], np.cumsum(changed, dtype=np.int32)))
            self._change_sums[key] = sums
        return sums

    def tally(self, index: int, contest_id: str = "list", division_id: str | None = None) -> Tally:
        """Figures of one division (default: the contest's root) in snapshot `index`."""
        contest = self.contests[contest_id]
        division = contest.divisions[division_id or contest.root_id]
        cumulative = self._cumulative(index, contest_id)
        row = (cumulative[division.stop] - cumulative[division.start]).tolist()
        offset = 2
        return Tally(
            registered=row[0],
            ballots_issued=row[offset + COL_ISSUED],
            ballots_cast=row[offset + COL_CAST],
            invalid=row[offset + COL_INVALID],
            votes=tuple(row[offset + FIRST_CHOICE_COL : -1]),
            against_all=row[-1],
            precincts_counted=row[1],
            precincts_total=division.stop - division.start,
        )

    def national_shares(self, index: int, contest_id: str = "list") -> dict[int, float]:
        """Correct percentages (votes / ballots cast) of the root division, by ballot number."""
        tally = self.tally(index, contest_id)
        choices = self.contests[contest_id].choices
        return {c.position: tally.pct(v) for c, v in zip(choices, tally.votes, strict=True)}


# A builder takes the seed and, for scenarios whose size is a parameter, `precincts`.
ScenarioBuilder = Callable[..., Scenario]
_BUILDERS: dict[str, tuple[ScenarioBuilder, int, bool]] = {}


def register(
    scenario_id: str, default_seed: int, *, sized: bool = False
) -> Callable[[ScenarioBuilder], ScenarioBuilder]:
    """Decorator registering a scenario builder under an id, with its default seed.

    `sized`: the builder also takes `precincts=N` (the country's size is a parameter).
    """

    def wrap(builder: ScenarioBuilder) -> ScenarioBuilder:
        _BUILDERS[scenario_id] = (builder, default_seed, sized)
        return builder

    return wrap


def scenario_ids() -> tuple[str, ...]:
    """The ids `load_scenario` accepts."""
    _import_builtin_scenarios()
    return tuple(_BUILDERS)


def default_seed(scenario_id: str) -> int:
    """The seed a scenario is built with when none is given."""
    _import_builtin_scenarios()
    return _BUILDERS[scenario_id][1]


@lru_cache(maxsize=8)
def load_scenario(
    scenario_id: str = "kg2021", seed: int | None = None, precincts: int | None = None
) -> Scenario:
    """Build (once per process, seed and size) the scenario `scenario_id`; same seed, same data.

    `precincts` sets the size of scenarios built to a size (`synthetic`); the others have
    their own fixed geography and refuse it.
    """
    _import_builtin_scenarios()
    try:
        builder, fallback_seed, sized = _BUILDERS[scenario_id]
    except KeyError:
        raise KeyError(f"unknown scenario {scenario_id!r}; known: {sorted(_BUILDERS)}") from None
    seed = fallback_seed if seed is None else seed
    if precincts is None:
        return builder(seed)
    if not sized:
        raise ValueError(f"scenario {scenario_id!r} has a fixed size: --precincts does not apply")
    return builder(seed, precincts=precincts)


def _import_builtin_scenarios() -> None:
    # imported here, not at module top, because the scenarios import this module's model
    import etl.replica.kg2021
    import etl.replica.synthetic  # noqa: F401
