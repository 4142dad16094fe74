"""Scenario `synthetic`: a made-up country of N precincts (default 100,000), for scale tests.

Same pages and links as `kg2021` (SPEC A), four levels in the party list: country `0` →
20 regions (`1` … `20`) → about N/100 district commissions (`<region>-<k>`, e.g. `7-003`)
→ precincts (six-digit numbers from `100001`). Besides the party list (18 parties and
against-all) there are four single-member contests, each over one district commission's
precincts (root `0`, level `constituency`, → precincts), as in by-elections.

Counting progresses over 12 snapshots (0% → 100%, never backwards); every division's
figures are sums over its precincts, so clean pages pass the quality gate. One incident:
at `misprint` one precinct page of the party list shows one line's votes with a digit
typed twice (1234 → 12344) and the percentage computed from that figure, so the page's
lines no longer add up to its ballots (C3, critical: the party list is quarantined); the
next snapshot is correct again.

Everything is numpy, deterministic from the seed; divisions are built on demand from
arrays (`_ListDivisions`), never as 100,000 objects up front, and pages are rendered when
asked (`etl.replica.render`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone

import numpy as np

from etl.replica.scenario import (
    MODE_RESULTS,
    Choice,
    Contest,
    Division,
    Misprint,
    Scenario,
    Snapshot,
    register,
)
from etl.replica.synthesis import apportion

DEFAULT_SEED = 20300101
DEFAULT_PRECINCTS = 100_000
MIN_PRECINCTS = 200
MAX_PRECINCTS = 899_999  # six-digit precinct numbers
N_REGIONS = 20
PRECINCTS_PER_DISTRICT = 100
N_SINGLE_MEMBER = 4
PORTAL_TZ = timezone(timedelta(hours=6))
ELECTION_ID = "synth2030"

REGION_STEMS: tuple[tuple[str, str], ...] = (
    ("Ала-Тоо", "Ала-Тоо"), ("Ак-Суу", "Ак-Суу"), ("Кара-Суу", "Кара-Суу"),
    ("Кок-Жар", "Көк-Жар"), ("Сары-Таш", "Сары-Таш"), ("Тоо-Булак", "Тоо-Булак"),
    ("Кызыл-Суу", "Кызыл-Суу"), ("Бел-Алды", "Бел-Алды"), ("Чон-Таш", "Чоң-Таш"),
    ("Жаны-Жол", "Жаңы-Жол"), ("Ак-Жол", "Ак-Жол"), ("Кара-Кол", "Кара-Көл"),
    ("Кок-Тобо", "Көк-Төбө"), ("Сары-Жаз", "Сары-Жаз"), ("Тогуз-Булак", "Тогуз-Булак"),
    ("Бор-Булак", "Бор-Булак"), ("Ак-Тала", "Ак-Талаа"), ("Кара-Жыгач", "Кара-Жыгач"),
    ("Туюк", "Түйүк"), ("Терек", "Терек"),
)
PARTIES: tuple[str, ...] = (
    "«Ак-Жол»", "«Ата-Мекен»", "«Бирдик»", "«Жаңы Муун»", "«Замандаш»", "«Ынтымак Эл»",
    "«Келечек»", "«Мекен Туусу»", "«Нур Жолу»", "«Өнүгүү»", "«Республика»",
    "«Элдик Кеңеш»", "«Ата-Журт Биримдиги»", "«Таза Коом»", "«Улуттук Жол»", "«Ырыс»",
    "«Яшил Водий»", "«Эркин Эл» саясий партиясы",
)
CANDIDATES: tuple[str, ...] = (
    "Абдыкадыров Нурбек Осмонович", "Асанбекова Айгүл Токтосуновна", "Бекболов Эрлан Жумабекович",
    "Жумабеков Азамат Кадырович", "Кадырова Жылдыз Момуновна", "Момунов Дастан Сатыбалдиевич",
    "Осмонов Темир Турдубаевич", "Сатыбалдиева Асел Эсенгуловна", "Токтосунов Марат Алымкулович",
    "Үсөнбаев Чыңгыз Таштанович", "Эсенгулова Динара Ормоновна", "Ким Ольга Владимировна",
    "Төрөкулов Мирлан Сыдыкович", "Ниязалиев Руслан Бообекович", "Курманалиева Сезим Мамытовна",
    "Шаршенбаев Эркин Дүйшөнович",
)
# (label, share of precincts counted, description); the last two have every protocol in.
TIMELINE: tuple[tuple[str, float, str], ...] = (
    ("polls-closed", 0.0, "Polls close; every page shows registered voters only."),
    ("counting-1", 0.04, "First automatic counts."),
    ("counting-2", 0.12, "Automatic counts arrive."),
    ("counting-3", 0.25, "Automatic counts arrive."),
    ("counting-4", 0.40, "Automatic counts arrive."),
    ("counting-5", 0.55, "Automatic counts arrive."),
    ("counting-6", 0.68, "Automatic counts arrive."),
    ("misprint", 0.80, "One precinct page of the party list shows one line's votes with a "
                       "digit typed twice; its lines no longer add up (C3)."),
    ("counting-7", 0.90, "The misprint is corrected; late counts arrive."),
    ("counting-8", 0.97, "Late counts from remote precincts."),
    ("counting-complete", 1.0, "Every protocol is in."),
    ("final", 1.0, "Final: 5% of the precincts (whole district commissions) recounted by "
                   "hand; only their pages and their parents' change."),
)
RECOUNT_SHARE = 0.05
MISPRINT_LABEL = "misprint"
POLLS_CLOSE = datetime(2030, 3, 3, 20, 0, tzinfo=PORTAL_TZ)


@register("synthetic", DEFAULT_SEED, sized=True)
def build_synthetic(seed: int, precincts: int = DEFAULT_PRECINCTS) -> Scenario:
    """Build the synthetic scenario of `precincts` precincts deterministically from `seed`."""
    if not MIN_PRECINCTS <= precincts <= MAX_PRECINCTS:
        raise ValueError(f"precincts must be within {MIN_PRECINCTS}..{MAX_PRECINCTS}")
    rng = np.random.default_rng(seed)
    geo = _Geography.build(rng, precincts)
    n = precincts

    registered = np.maximum(rng.lognormal(np.log(1_100), 0.45, n).astype(np.int64), 60)
    region_turnout = rng.uniform(0.35, 0.65, N_REGIONS)
    turnout = np.clip(region_turnout[geo.region_of] + rng.normal(0.0, 0.06, n), 0.1, 0.92)
    cast = rng.binomial(registered, turnout).astype(np.int64)
    issued = cast + rng.binomial(registered - cast, 0.002)

    list_counts = _party_list_counts(rng, geo, cast)
    recount_order = _recount_order(rng, geo)
    # The hand count accepts about a third of the ballots the machines rejected, for the
    # precinct's leading party: protocols still add up, figures change.
    manual_counts = list_counts.copy()
    accepted = rng.binomial(list_counts[:, -1], 0.3)
    leader = np.argmax(list_counts[:, :-2], axis=1)
    manual_counts[np.arange(n), leader] += accepted
    manual_counts[:, -1] -= accepted
    contests: dict[str, Contest] = {
        "list": _list_contest(geo, issued, cast, list_counts, manual_counts)
    }
    for number, district in enumerate(_single_member_districts(rng, geo), start=1):
        contest = _single_member_contest(rng, geo, number, district, issued, cast)
        contests[contest.contest_id] = contest

    # Protocols arrive in a random order, the regions' capitals a little earlier on average.
    keys = rng.random(n) - 0.2 * (geo.district_rank == 0)
    counting_order = np.argsort(keys, kind="stable")
    snapshots = _snapshots(rng, geo, contests["list"], counting_order, recount_order)
    return Scenario(
        scenario_id="synthetic",
        seed=seed,
        election_id=ELECTION_ID,
        election_name_ru=f"Синтетические выборы ({n:,} участков) 03.03.2030".replace(",", " "),
        election_name_kg=f"Синтетикалык шайлоо ({n:,} участок) 03.03.2030".replace(",", " "),
        election_date="2030-03-03",
        precinct_ids=geo.precinct_ids,
        registered=registered,
        counting_order=counting_order,
        recount_order=recount_order,
        contests=contests,
        snapshots=snapshots,
        page_times_follow_changes=True,
    )


def _recount_order(rng: np.random.Generator, geo: _Geography) -> np.ndarray:
    """Precinct rows recounted by hand at `final`: whole districts, about 5% of precincts."""
    target = max(1, round(geo.n * RECOUNT_SHARE))
    rows: list[np.ndarray] = []
    total = 0
    for d in rng.permutation(len(geo.district_region)):
        if total >= target:
            break
        district_rows = np.arange(geo.district_starts[d], geo.district_starts[d + 1])
        rows.append(district_rows)
        total += len(district_rows)
    return np.concatenate(rows)


class _Geography:
    """Precincts in page order (region, district, number), as arrays."""

    def __init__(self, region_sizes: np.ndarray, district_sizes: list[np.ndarray]) -> None:
        self.n = int(region_sizes.sum())
        self.precinct_ids = tuple(str(100_001 + i) for i in range(self.n))
        # district d covers precinct rows district_starts[d]:district_starts[d + 1]
        sizes = np.concatenate(district_sizes)
        self.district_starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.district_region = np.repeat(
            np.arange(N_REGIONS), [len(d) for d in district_sizes]
        ).astype(np.int64)
        self.district_number = np.concatenate([np.arange(1, len(d) + 1) for d in district_sizes])
        # region r covers districts region_starts[r]:region_starts[r + 1]
        self.region_starts = np.concatenate(
            ([0], np.cumsum([len(d) for d in district_sizes]))
        ).astype(np.int64)
        self.district_of = np.repeat(np.arange(len(sizes)), sizes)
        self.region_of = self.district_region[self.district_of]
        self.district_rank = self.district_number[self.district_of] - 1

    @staticmethod
    def build(rng: np.random.Generator, precincts: int) -> _Geography:
        n_districts = max(N_REGIONS, round(precincts / PRECINCTS_PER_DISTRICT))
        region_weights = rng.lognormal(0.0, 0.35, N_REGIONS)
        districts_per_region = 1 + apportion(n_districts - N_REGIONS, region_weights)
        region_sizes = apportion(precincts, districts_per_region * rng.uniform(0.9, 1.1, N_REGIONS))
        district_sizes = []
        for r in range(N_REGIONS):
            k = int(districts_per_region[r])
            extra = int(region_sizes[r]) - k  # every district has at least one precinct
            district_sizes.append(1 + apportion(extra, rng.dirichlet(np.full(k, 12.0))))
        return _Geography(region_sizes, district_sizes)

    def district_id(self, d: int) -> str:
        return f"{int(self.district_region[d]) + 1}-{int(self.district_number[d]):03d}"


def _party_list_counts(rng: np.random.Generator, geo: _Geography, cast: np.ndarray) -> np.ndarray:
    """[votes of each party, against-all, invalid] per precinct (rows sum to ballots cast)."""
    n_parties = len(PARTIES)
    national = rng.dirichlet(np.full(n_parties, 1.5)) * 0.90
    national = np.concatenate((national, [0.025, 0.075]))  # against-all, invalid
    strength = rng.lognormal(0.0, 0.3, (N_REGIONS, len(national)))
    mean = national * strength[geo.region_of]
    mean /= mean.sum(axis=1, keepdims=True)
    # A Dirichlet draw per precinct around its region's mean: gamma variates, normalised.
    pvals = rng.standard_gamma(mean * 300)
    return _multinomial_rows(rng, cast, pvals)


def _multinomial_rows(rng: np.random.Generator, totals: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A multinomial draw per row (row sums = `totals`), one binomial per column.

    The chain of conditional binomials is exact and vectorised over rows; numpy's
    `multinomial` with a probability row per precinct loops in Python-speed C per row.
    """
    counts = np.zeros(weights.shape, dtype=np.int64)
    remaining = np.asarray(totals, dtype=np.int64).copy()
    rest = weights.sum(axis=1)
    for j in range(weights.shape[1] - 1):
        p = np.clip(weights[:, j] / np.maximum(rest, 1e-300), 0.0, 1.0)
        counts[:, j] = rng.binomial(remaining, p)
        remaining -= counts[:, j]
        rest -= weights[:, j]
    counts[:, -1] = remaining
    return counts


def _matrix(issued: np.ndarray, cast: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Contest matrix [issued, cast, invalid, choices..., against-all] from [choices, aa, inv]."""
    return np.column_stack((issued, cast, counts[:, -1], counts[:, :-1])).astype(np.int64)


def _list_contest(
    geo: _Geography, issued: np.ndarray, cast: np.ndarray, counts: np.ndarray,
    manual_counts: np.ndarray,
) -> Contest:
    matrix = _matrix(issued, cast, counts)
    return Contest(
        contest_id="list",
        name_ru="Единый избирательный округ (по партийным спискам)",
        name_kg="Бирдиктүү шайлоо округу (партиялык тизмелер боюнча)",
        seats=120,
        choices=tuple(Choice(i + 1, name) for i, name in enumerate(PARTIES)),
        root_id="0",
        divisions=_ListDivisions(geo),
        precinct_rows=np.arange(geo.n),
        automatic=matrix,
        manual=_matrix(issued, cast, manual_counts),
    )


class _ListDivisions(Mapping[str, Division]):
    """The party list's divisions, made on demand from the geography's arrays.

    Iteration is in page order (depth first from the root), as a crawler meets them.
    """

    def __init__(self, geo: _Geography) -> None:
        self._geo = geo
        n_districts = len(geo.district_region)
        self._district_ids = tuple(geo.district_id(d) for d in range(n_districts))
        # id -> (level code, index): 0 root, 1 region, 2 district, 3 precinct
        self._index: dict[str, tuple[int, int]] = {"0": (0, 0)}
        self._index.update((str(r + 1), (1, r)) for r in range(N_REGIONS))
        self._index.update((d_id, (2, d)) for d, d_id in enumerate(self._district_ids))
        self._index.update((p_id, (3, i)) for i, p_id in enumerate(geo.precinct_ids))
        self._upper: dict[str, Division] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        geo = self._geo
        yield "0"
        for r in range(N_REGIONS):
            yield str(r + 1)
            for d in range(int(geo.region_starts[r]), int(geo.region_starts[r + 1])):
                yield self._district_ids[d]
                start, stop = int(geo.district_starts[d]), int(geo.district_starts[d + 1])
                yield from geo.precinct_ids[start:stop]

    def __getitem__(self, division_id: str) -> Division:
        level, k = self._index[division_id]
        if level == 3:
            return self._precinct(division_id, k)
        # the ~1,000 divisions above precincts are asked for on every page (breadcrumbs)
        division = self._upper.get(division_id)
        if division is None:
            division = self._upper[division_id] = self._make(division_id, level, k)
        return division

    def _precinct(self, division_id: str, k: int) -> Division:
        return Division(
            division_id, "precinct", f"УИК №{division_id}", f"УШК №{division_id}",
            self._district_ids[int(self._geo.district_of[k])], (), k, k + 1,
        )

    def _make(self, division_id: str, level: int, k: int) -> Division:
        geo = self._geo
        if level == 0:
            return Division(
                "0", "country", "Синтетическая Республика", "Синтетикалык Республика", None,
                tuple(str(r + 1) for r in range(N_REGIONS)), 0, geo.n,
            )
        if level == 1:
            first, last = int(geo.region_starts[k]), int(geo.region_starts[k + 1])
            stem_ru, stem_kg = REGION_STEMS[k]
            return Division(
                division_id, "region", f"{stem_ru}ская область", f"{stem_kg} облусу", "0",
                self._district_ids[first:last],
                int(geo.district_starts[first]), int(geo.district_starts[last]),
            )
        if level == 2:
            region = int(geo.district_region[k])
            number = int(geo.district_number[k])
            start, stop = int(geo.district_starts[k]), int(geo.district_starts[k + 1])
            stem_ru, stem_kg = REGION_STEMS[region]
            return Division(
                division_id, "district", f"{stem_ru}ская районная ТИК №{number}",
                f"{stem_kg} №{number} райондук ТШК", str(region + 1),
                geo.precinct_ids[start:stop], start, stop,
            )
        raise KeyError(division_id)


def _single_member_districts(rng: np.random.Generator, geo: _Geography) -> list[int]:
    """The district commissions holding a by-election: four, in four different regions."""
    regions = rng.choice(N_REGIONS, N_SINGLE_MEMBER, replace=False)
    return [
        int(rng.integers(geo.region_starts[r], geo.region_starts[r + 1])) for r in sorted(regions)
    ]


def _single_member_contest(
    rng: np.random.Generator,
    geo: _Geography,
    number: int,
    district: int,
    issued: np.ndarray,
    cast: np.ndarray,
) -> Contest:
    rows = np.arange(geo.district_starts[district], geo.district_starts[district + 1])
    n_candidates = int(rng.integers(4, 9))
    names = [CANDIDATES[int(i)] for i in rng.choice(len(CANDIDATES), n_candidates, replace=False)]
    strength = rng.dirichlet(np.full(n_candidates, 1.2)) * 0.9
    mean = np.concatenate((strength, [0.04, 0.06]))  # against-all, invalid
    weights = rng.standard_gamma(mean / mean.sum() * 300, (len(rows), len(mean)))
    counts = _multinomial_rows(rng, cast[rows], weights)
    matrix = _matrix(issued[rows], cast[rows], counts)
    region = int(geo.district_region[district])
    stem_ru, stem_kg = REGION_STEMS[region]
    root_ru = f"Одномандатный избирательный округ №{number} ({stem_ru})"
    root_kg = f"№{number} бир мандаттуу шайлоо округу ({stem_kg})"
    precinct_ids = tuple(geo.precinct_ids[int(i)] for i in rows)
    divisions: dict[str, Division] = {
        "0": Division("0", "constituency", root_ru, root_kg, None, precinct_ids, 0, len(rows))
    }
    for local, precinct_id in enumerate(precinct_ids):
        divisions[precinct_id] = Division(
            precinct_id, "precinct", f"УИК №{precinct_id}", f"УШК №{precinct_id}", "0", (),
            local, local + 1,
        )
    return Contest(
        contest_id=f"okrug-{number}",
        name_ru=root_ru,
        name_kg=root_kg,
        seats=1,
        choices=tuple(Choice(k + 1, name) for k, name in enumerate(names)),
        root_id="0",
        divisions=divisions,
        precinct_rows=rows,
        automatic=matrix,
        manual=matrix,
    )


def _snapshots(
    rng: np.random.Generator, geo: _Geography, list_contest: Contest, counting_order: np.ndarray,
    recount_order: np.ndarray,
) -> tuple[Snapshot, ...]:
    snapshots = []
    when = POLLS_CLOSE
    for index, (label, share, description) in enumerate(TIMELINE):
        counted = geo.n if share >= 1.0 else round(geo.n * share)
        recounted = len(recount_order) if label == "final" else 0
        misprint = None
        if label == MISPRINT_LABEL:
            misprint = _misprint(rng, geo, list_contest, counting_order[:counted])
        snapshots.append(
            Snapshot(
                index=index,
                label=label,
                portal_time=when,
                description=description,
                mode=MODE_RESULTS,
                precincts_counted=counted,
                precincts_recounted=recounted,
                annulled=frozenset(),
                doubled_positions=frozenset(),
                duplicate=None,
                misprint=misprint,
            )
        )
        when += timedelta(minutes=int(rng.integers(12, 40)))
    return tuple(snapshots)


def _misprint(
    rng: np.random.Generator, geo: _Geography, contest: Contest, counted_rows: np.ndarray
) -> Misprint:
    """A counted precinct's leading line, shown with its last digit typed twice."""
    row = int(rng.choice(counted_rows))
    votes = contest.automatic[row, 3:-1]
    position = int(np.argmax(votes)) + 1
    true_votes = int(votes[position - 1])
    return Misprint("list", geo.precinct_ids[row], position, true_votes * 10 + true_votes % 10)
