"""Scenario `kg2021`: election night of 28 November 2021 (figures from FACTS.md).

Precinct figures are synthetic but constructed so that the national totals of the party
list hit the published preliminary and final figures exactly; see README.md for the
timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from etl.replica.scenario import (
    MODE_MAINTENANCE,
    MODE_RESULTS,
    MODE_UNAVAILABLE,
    Choice,
    Contest,
    Division,
    DuplicateRow,
    Scenario,
    Snapshot,
    register,
)
from etl.replica.synthesis import apportion, integer_rows, integer_table

DEFAULT_SEED = 20211128
PORTAL_TZ = timezone(timedelta(hours=6))

REGISTERED_TOTAL = 3_703_420
REGISTERED_ABROAD = 84_128
CAST_FINAL = 1_281_622  # over all precincts except the annulled ones
CAST_PRELIMINARY = 1_182_291  # over the first 2,247 protocols
PRECINCTS_PRELIMINARY = 2_247
ANNULLED_PRECINCTS = 20
ANNULLED_CAST = 12_046  # "about 12,000 votes"
RECOUNT_FIRST = 710  # 710 / 2494 = 28.47% counted by hand on 30 November

# (ballot name, preliminary %, final % or None: others are scaled from the preliminary)
PARTIES: tuple[tuple[str, float, float | None], ...] = (
    ("«Ата-Мекен»", 3.48, None),
    ("«Бүтүн Кыргызстан» саясий партиясы", 6.74, 7.04),
    ("«Альянс»", 8.23, 8.35),
    ("«Легализация»", 0.62, None),
    ("«Ыйман Нуру»", 6.01, 6.17),
    ("«Күчтүү регион»", 0.62, None),
    ("«Багыт»", 0.95, None),
    ("«Ынтымак»", 10.81, 11.00),
    ("«Ишеним»", 13.50, 13.61),
    ("«Азаттык»", 4.01, None),
    ("«Мекенчил Эл»", 1.54, None),
    ("«Жашыл партия»", 0.41, None),
    ("«Жашасын Кыргызстан»", 0.44, None),
    ("«Социал-демократтар»", 3.21, None),
    ("«Аруузат-Эл Куту»", 0.46, None),
    ("«Патриоттук биримдик» партиясы", 0.96, None),
    ("«Улуттар биримдиги»", 2.48, None),
    ("«Эл Үмүтү» саясий партиясы", 4.46, None),
    ("«Ордо»", 0.46, None),
    ("«Улуу-Журт»", 0.71, None),
    ("«Ата-Журт Кыргызстан»", 16.86, 17.32),
)
AGAINST_ALL_PRELIMINARY = 2.17
AGAINST_ALL_FINAL = 2.20
PARTIES_FINAL_SUM = 88.50  # leaves invalid ballots at about 9.3% of those who took part
LEADING_POSITIONS = frozenset({21, 9, 8, 3, 2, 5})


@dataclass(frozen=True)
class Region:
    """A region of the party-list hierarchy and how its precincts look."""

    region_id: str
    digit: int  # first digit of its precinct numbers
    first_number: int
    name_ru: str
    name_kg: str
    precincts: int
    registered_weight: float  # thousands of voters, scaled to the exact total
    turnout: float
    districts: tuple[tuple[str, str], ...]  # (ru, kg); empty: precincts hang off the region
    okrugs: int


REGIONS: tuple[Region, ...] = (
    Region("1", 1, 1001, "г. Бишкек", "Бишкек шаары", 239, 600, 0.25, (
        ("Ленинская районная ТИК", "Ленин райондук ТШК"),
        ("Октябрьская районная ТИК", "Октябрь райондук ТШК"),
        ("Первомайская районная ТИК", "Биринчи май райондук ТШК"),
        ("Свердловская районная ТИК", "Свердлов райондук ТШК"),
    ), 4),
    Region("11", 5, 5701, "г. Ош", "Ош шаары", 85, 170, 0.33, (
        ("Ошская городская ТИК", "Ош шаардык ТШК"),
    ), 2),
    Region("8", 8, 8001, "Баткенская область", "Баткен облусу", 216, 290, 0.42, (
        ("Баткенская районная ТИК", "Баткен райондук ТШК"),
        ("Кадамжайская районная ТИК", "Кадамжай райондук ТШК"),
        ("Лейлекская районная ТИК", "Лейлек райондук ТШК"),
        ("ТИК г. Кызыл-Кыя", "Кызыл-Кыя шаардык ТШК"),
        ("ТИК г. Сулюкта", "Сүлүктү шаардык ТШК"),
    ), 3),
    Region("2", 2, 2001, "Джалал-Абадская область", "Жалал-Абад облусу", 452, 660, 0.40, (
        ("Аксыйская районная ТИК", "Аксы райондук ТШК"),
        ("Ала-Букинская районная ТИК", "Ала-Бука райондук ТШК"),
        ("Базар-Коргонская районная ТИК", "Базар-Коргон райондук ТШК"),
        ("Ноокенская районная ТИК", "Ноокен райондук ТШК"),
        ("Сузакская районная ТИК", "Сузак райондук ТШК"),
        ("Тогуз-Тороуская районная ТИК", "Тогуз-Торо райондук ТШК"),
        ("Токтогульская районная ТИК", "Токтогул райондук ТШК"),
        ("Чаткальская районная ТИК", "Чаткал райондук ТШК"),
        ("ТИК г. Джалал-Абад", "Жалал-Абад шаардык ТШК"),
        ("ТИК г. Майлуу-Суу", "Майлуу-Суу шаардык ТШК"),
        ("ТИК г. Таш-Кумыр", "Таш-Көмүр шаардык ТШК"),
    ), 7),
    Region("3", 3, 3001, "Иссык-Кульская область", "Ысык-Көл облусу", 250, 290, 0.34, (
        ("Ак-Суйская районная ТИК", "Ак-Суу райондук ТШК"),
        ("Джети-Огузская районная ТИК", "Жети-Өгүз райондук ТШК"),
        ("Иссык-Кульская районная ТИК", "Ысык-Көл райондук ТШК"),
        ("Тонская районная ТИК", "Тоң райондук ТШК"),
        ("Тюпская районная ТИК", "Түп райондук ТШК"),
        ("ТИК г. Каракол", "Каракол шаардык ТШК"),
        ("ТИК г. Балыкчы", "Балыкчы шаардык ТШК"),
    ), 3),
    Region("4", 4, 4001, "Нарынская область", "Нарын облусу", 170, 170, 0.43, (
        ("Ак-Талинская районная ТИК", "Ак-Талаа райондук ТШК"),
        ("Ат-Башинская районная ТИК", "Ат-Башы райондук ТШК"),
        ("Джумгальская районная ТИК", "Жумгал райондук ТШК"),
        ("Кочкорская районная ТИК", "Кочкор райондук ТШК"),
        ("Нарынская районная ТИК", "Нарын райондук ТШК"),
        ("ТИК г. Нарын", "Нарын шаардык ТШК"),
    ), 2),
    Region("5", 5, 5001, "Ошская область", "Ош облусу", 501, 700, 0.40, (
        ("Алайская районная ТИК", "Алай райондук ТШК"),
        ("Араванская районная ТИК", "Араван райондук ТШК"),
        ("Кара-Кульджинская районная ТИК", "Кара-Кулжа райондук ТШК"),
        ("Кара-Сууйская районная ТИК", "Кара-Суу райондук ТШК"),
        ("Ноокатская районная ТИК", "Ноокат райондук ТШК"),
        ("Узгенская районная ТИК", "Өзгөн райондук ТШК"),
        ("Чон-Алайская районная ТИК", "Чоң-Алай райондук ТШК"),
    ), 7),
    Region("6", 6, 6001, "Таласская область", "Талас облусу", 119, 150, 0.45, (
        ("Бакай-Атинская районная ТИК", "Бакай-Ата райондук ТШК"),
        ("Кара-Бууринская районная ТИК", "Кара-Буура райондук ТШК"),
        ("Манасская районная ТИК", "Манас райондук ТШК"),
        ("Таласская районная ТИК", "Талас райондук ТШК"),
        ("ТИК г. Талас", "Талас шаардык ТШК"),
    ), 2),
    Region("7", 7, 7001, "Чуйская область", "Чүй облусу", 403, 589, 0.29, (
        ("Аламудунская районная ТИК", "Аламүдүн райондук ТШК"),
        ("Жайылская районная ТИК", "Жайыл райондук ТШК"),
        ("Кеминская районная ТИК", "Кемин райондук ТШК"),
        ("Московская районная ТИК", "Москва райондук ТШК"),
        ("Панфиловская районная ТИК", "Панфилов райондук ТШК"),
        ("Сокулукская районная ТИК", "Сокулук райондук ТШК"),
        ("Ысык-Атинская районная ТИК", "Ысык-Ата райондук ТШК"),
        ("Чуйская районная ТИК", "Чүй райондук ТШК"),
        ("ТИК г. Токмок", "Токмок шаардык ТШК"),
    ), 6),
    Region("9", 9, 9001, "За рубежом (МИД КР)", "Чет өлкөлөр (КР ТИМ)", 59, 0, 0.14, (), 0),
)
ABROAD_ID = "9"
BISHKEK_OKRUG_NAMES = ("Ленинский", "Октябрьский", "Первомайский", "Свердловский")
AGAINST_ALL_WINS = frozenset({"okrug-3", "okrug-4"})  # Pervomaisky and Sverdlovsky

# Regional strength of parties (multipliers on the national share), in REGIONS order:
# Bishkek, Osh city, Batken, Jalal-Abad, Issyk-Kul, Naryn, Osh, Talas, Chui, abroad.
REGIONAL_STRENGTH: dict[int, tuple[float, ...]] = {
    21: (0.6, 1.5, 1.4, 1.2, 0.8, 0.9, 1.5, 0.8, 0.6, 1.2),
    9: (0.9, 0.9, 1.2, 1.3, 0.9, 1.0, 1.0, 0.9, 0.9, 0.8),
    8: (0.8, 0.7, 0.8, 0.9, 1.3, 1.4, 0.8, 1.5, 1.3, 0.8),
    3: (1.4, 0.8, 0.7, 0.8, 1.2, 1.0, 0.7, 1.0, 1.3, 1.0),
    2: (0.9, 1.6, 1.3, 1.2, 0.7, 0.8, 1.2, 0.6, 0.7, 1.0),
    5: (1.5, 1.3, 0.9, 0.9, 0.9, 0.8, 0.9, 0.9, 1.1, 1.3),
    14: (2.2, 0.6, 0.5, 0.6, 1.0, 0.7, 0.5, 0.9, 1.6, 1.2),
    1: (1.0, 0.8, 0.8, 1.6, 0.8, 0.9, 0.8, 1.3, 0.9, 0.8),
    10: (0.8, 0.9, 1.3, 1.2, 1.0, 1.1, 0.9, 1.2, 0.8, 0.7),
    17: (1.5, 1.4, 0.6, 0.8, 1.0, 0.6, 0.9, 0.7, 1.3, 0.9),
}
AGAINST_ALL_STRENGTH = (2.0, 1.0, 0.6, 0.7, 1.0, 0.8, 0.6, 0.8, 1.3, 1.8)
INVALID_STRENGTH = (0.8, 1.0, 1.1, 1.1, 1.0, 1.0, 1.1, 1.0, 0.9, 0.7)

ABROAD_CITIES = (
    "Москва", "Санкт-Петербург", "Екатеринбург", "Новосибирск", "Казань", "Самара",
    "Красноярск", "Иркутск", "Якутск", "Сургут", "Алматы", "Нур-Султан", "Ташкент",
    "Душанбе", "Стамбул", "Анкара", "Дубай", "Сеул", "Токио", "Пекин", "Урумчи", "Берлин",
    "Лондон", "Париж", "Вена", "Рим", "Мадрид", "Прага", "Варшава", "Вашингтон",
    "Нью-Йорк", "Чикаго", "Оттава", "Баку", "Минск", "Киев", "Тегеран", "Эр-Рияд",
    "Куала-Лумпур", "Нью-Дели", "Доха", "Эль-Кувейт", "Анталья", "Брюссель", "Женева",
)

MALE_NAMES = (
    "Нурбек", "Өмүрбек", "Бакыт", "Таалайбек", "Үсөн", "Эрлан", "Мирлан", "Нурлан",
    "Алмазбек", "Жоомарт", "Кубанычбек", "Темир", "Дастан", "Азамат", "Бактыбек", "Төлөгөн",
    "Үмөтали", "Чыңгыз", "Айбек", "Эркин", "Марат", "Руслан", "Сүйүнбек", "Мелис", "Жеңиш",
)
FEMALE_NAMES = (
    "Айгүл", "Гүлнара", "Жылдыз", "Нуржан", "Чолпон", "Үмүт", "Айжан", "Динара", "Гүлбара",
    "Сезим", "Бүбүсара", "Элмира", "Аида", "Гүлмира", "Асел",
)
ROOTS = (
    "Абдыкадыр", "Асанбек", "Бекбол", "Жумабек", "Кадыр", "Момун", "Осмон", "Сатыбалды",
    "Токтосун", "Үсөнбай", "Эсенгул", "Төрөкул", "Өмүрзак", "Ниязалы", "Маматкадыр",
    "Турдубай", "Шаршенбай", "Алымкул", "Бообек", "Дүйшөн", "Курманалы", "Мамыт", "Сыдык",
    "Таштан", "Эшмат", "Жээнбек", "Ормон", "Сулайман", "Көчкөн", "Жолдош", "Сооронбай",
)
RUSSIAN_NAMES = (
    "Иванов Сергей Петрович", "Ким Ольга Владимировна", "Петрова Наталья Ивановна",
    "Смирнов Андрей Викторович", "Ли Евгений Александрович", "Кузнецова Елена Сергеевна",
    "Шевченко Игорь Николаевич", "Цой Марина Олеговна",
)


# (label, portal time, protocols counted, recounted by hand, mode, what happens)
TIMELINE: tuple[tuple[str, str, int, int, str, str], ...] = (
    ("polls-closed", "2021-11-28T20:00:00", 0, 0, MODE_RESULTS,
     "Polls close; nothing counted, every page shows registered voters only."),
    ("counting-1", "2021-11-28T20:18:42", 262, 0, MODE_RESULTS,
     "First automatic (ballot-box) counts arrive."),
    ("counting-2", "2021-11-28T20:37:05", 786, 0, MODE_RESULTS, "Automatic counts arrive."),
    ("counting-3", "2021-11-28T20:55:31", 1_398, 0, MODE_RESULTS, "Automatic counts arrive."),
    ("counting-4", "2021-11-28T21:06:14", 1_851, 0, MODE_RESULTS, "Automatic counts arrive."),
    ("formula-error", "2021-11-28T21:13:09", 2_081, 0, MODE_RESULTS,
     "83% counted; the published % of the six leading parties is doubled on every page "
     "(national parties' sum about 149%); vote counts are right."),
    ("withdrawn-maintenance", "2021-11-28T21:19:40", 2_081, 0, MODE_MAINTENANCE,
     "Data withdrawn: every page is a 200 maintenance notice without results."),
    ("withdrawn-503", "2021-11-28T21:24:55", 2_081, 0, MODE_UNAVAILABLE,
     "Data withdrawn: every request is answered 503 with Retry-After."),
    ("preliminary", "2021-11-28T21:31:27", PRECINCTS_PRELIMINARY, 0, MODE_RESULTS,
     "Republished, correct: 2,247 of 2,494 (90.10%), took part 1,182,291, parties 86.96%."),
    ("counting-5", "2021-11-28T22:47:03", 2_388, 0, MODE_RESULTS, "Late automatic counts."),
    ("counting-6", "2021-11-29T03:12:50", 2_467, 0, MODE_RESULTS, "Late automatic counts."),
    ("counting-complete", "2021-11-29T11:20:00", 2_494, 0, MODE_RESULTS,
     "All 2,494 automatic counts in."),
    ("recount-1", "2021-11-30T19:00:00", 2_494, RECOUNT_FIRST, MODE_RESULTS,
     "Manual recount: 28.47% of protocols counted by hand replace the automatic counts."),
    ("recount-2", "2021-12-04T18:00:00", 2_494, 1_350, MODE_RESULTS, "Manual recount goes on."),
    ("recount-3", "2021-12-10T20:00:00", 2_494, 2_050, MODE_RESULTS, "Manual recount goes on."),
    ("recount-4", "2021-12-12T16:00:00", 2_494, 2_474, MODE_RESULTS,
     "Manual recount done everywhere except the 20 precincts about to be annulled."),
    ("annulment", "2021-12-13T12:00:00", 2_494, 2_474, MODE_RESULTS,
     "Results of 20 precincts (about 12,000 ballots) annulled: they show nothing counted, "
     "so cumulative counts go down."),
    ("duplicate-candidate", "2021-12-14T18:30:00", 2_494, 2_474, MODE_RESULTS,
     "One okrug's root page lists one candidate twice (same № and name); all else correct."),
    ("final", "2021-12-15T16:00:00", 2_494, 2_474, MODE_RESULTS,
     "Final results (CEC resolution №836): registered 3,703,420, took part 1,281,622."),
)


@register("kg2021", DEFAULT_SEED)
def build_kg2021(seed: int) -> Scenario:
    """Build the kg2021 scenario deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    geo = _Geography.build(rng)
    abroad = geo.region_of == len(REGIONS) - 1

    # Which protocols arrive after the preliminary release (remote, small, abroad) and
    # which are annulled later (20 precincts in two district commissions, counted early).
    late = _pick_late(rng, geo, abroad)
    annulled = _pick_annulled(rng, geo, late)
    early = ~late
    cast = _ballots_cast(rng, geo, late, annulled)
    issued = cast + rng.binomial(geo.registered - cast, 0.0015)

    list_auto, list_manual = _party_list_counts(rng, geo, cast, late, annulled)
    list_contest = _list_contest(geo, issued, cast, list_auto, list_manual)

    counting_order = np.concatenate(
        (_shuffled(rng, np.flatnonzero(early), geo), _shuffled(rng, np.flatnonzero(late), geo))
    )
    recount_order = _recount_order(rng, geo, annulled)

    okrugs = _okrug_contests(rng, geo, issued, cast, annulled)
    contests: dict[str, Contest] = {"list": list_contest}
    contests.update((c.contest_id, c) for c in okrugs)

    annulled_ids = frozenset(geo.precinct_ids[i] for i in np.flatnonzero(annulled))
    duplicate_okrug = okrugs[int(rng.integers(4, len(okrugs)))]
    duplicate = DuplicateRow(
        duplicate_okrug.contest_id,
        duplicate_okrug.root_id,
        int(rng.integers(1, len(duplicate_okrug.choices) + 1)),
    )
    snapshots = tuple(
        _snapshot(i, step, annulled_ids, duplicate) for i, step in enumerate(TIMELINE)
    )
    return Scenario(
        scenario_id="kg2021",
        seed=seed,
        election_id="jk2021",
        election_name_ru="Выборы депутатов Жогорку Кенеша Кыргызской Республики 28.11.2021",
        election_name_kg="Кыргыз Республикасынын Жогорку Кеңешинин депутаттарын шайлоо 28.11.2021",
        election_date="2021-11-28",
        precinct_ids=geo.precinct_ids,
        registered=geo.registered,
        counting_order=counting_order,
        recount_order=recount_order,
        contests=contests,
        snapshots=snapshots,
    )


@dataclass(frozen=True, eq=False)
class _Geography:
    """Precincts in page order (region, district, number) with their registered voters."""

    precinct_ids: tuple[str, ...]
    precinct_names: tuple[tuple[str, str], ...]  # (ru, kg)
    region_of: np.ndarray  # index into REGIONS
    district_of: np.ndarray  # running district index, -1 abroad
    district_ranges: tuple[tuple[int, int, int], ...]  # (region index, start, stop)
    registered: np.ndarray

    @staticmethod
    def build(rng: np.random.Generator) -> _Geography:
        ids: list[str] = []
        names: list[tuple[str, str]] = []
        region_of: list[int] = []
        district_of: list[int] = []
        ranges: list[tuple[int, int, int]] = []
        for r, region in enumerate(REGIONS):
            number = region.first_number
            if not region.districts:
                cities = rng.choice(len(ABROAD_CITIES), region.precincts, replace=True)
                for k in range(region.precincts):
                    ids.append(str(number))
                    city = ABROAD_CITIES[int(cities[k])]
                    names.append((f"УИК №{number} ({city})", f"УШК №{number} ({city})"))
                    region_of.append(r)
                    district_of.append(-1)
                    number += 1
                continue
            sizes = apportion(region.precincts, rng.dirichlet(np.full(len(region.districts), 8.0)))
            for size in sizes:
                start = len(ids)
                for _ in range(int(size)):
                    ids.append(str(number))
                    names.append((f"УИК №{number}", f"УШК №{number}"))
                    region_of.append(r)
                    district_of.append(len(ranges))
                    number += 1
                ranges.append((r, start, len(ids)))
                number += int(rng.integers(3, 9))  # numbering gaps between commissions
        region_arr = np.array(region_of)
        registered = np.zeros(len(ids), dtype=np.int64)
        weights = np.array([region.registered_weight for region in REGIONS[:-1]])
        weights = weights * rng.uniform(0.97, 1.03, len(weights))  # no suspiciously round rolls
        in_country = apportion(REGISTERED_TOTAL - REGISTERED_ABROAD, weights)
        totals = [*in_country.tolist(), REGISTERED_ABROAD]
        for r in range(len(REGIONS)):
            rows = np.flatnonzero(region_arr == r)
            sizes = rng.lognormal(0.0, 0.45, len(rows)) + 0.15
            registered[rows] = apportion(int(totals[r]), sizes)
        return _Geography(
            tuple(ids), tuple(names), region_arr, np.array(district_of), tuple(ranges), registered
        )


def _pick_late(rng: np.random.Generator, geo: _Geography, abroad: np.ndarray) -> np.ndarray:
    """The 247 precincts whose automatic counts arrive after the preliminary release."""
    n_late = len(geo.precinct_ids) - PRECINCTS_PRELIMINARY
    late = np.zeros(len(geo.precinct_ids), dtype=bool)
    late[rng.choice(np.flatnonzero(abroad), 40, replace=False)] = True
    rural = np.flatnonzero(~abroad & ~np.isin(geo.region_of, [0, 1]))
    weights = 1.0 / geo.registered[rural]  # small remote precincts report last
    late[rng.choice(rural, n_late - 40, replace=False, p=weights / weights.sum())] = True
    return late


def _pick_annulled(rng: np.random.Generator, geo: _Geography, late: np.ndarray) -> np.ndarray:
    """20 early-counted precincts in two rural district commissions."""
    annulled = np.zeros(len(geo.precinct_ids), dtype=bool)
    rural = [d for d, (r, start, stop) in enumerate(geo.district_ranges) if r >= 2 and stop - start > 30]
    for d in rng.choice(rural, 2, replace=False):
        _, start, stop = geo.district_ranges[int(d)]
        candidates = [i for i in range(start, stop) if not late[i]]
        half = ANNULLED_PRECINCTS // 2
        annulled[rng.choice(candidates, half, replace=False)] = True
    return annulled


def _ballots_cast(
    rng: np.random.Generator, geo: _Geography, late: np.ndarray, annulled: np.ndarray
) -> np.ndarray:
    """Ballots cast per precinct, each group summing exactly to the published figures."""
    turnout = np.array([REGIONS[r].turnout for r in geo.region_of])
    weights = geo.registered * turnout * rng.lognormal(0.0, 0.15, len(turnout))
    cast = np.zeros(len(turnout), dtype=np.int64)
    on_time = ~late & ~annulled
    groups = (
        (on_time, CAST_PRELIMINARY - ANNULLED_CAST),
        (annulled, ANNULLED_CAST),
        (late, CAST_FINAL - CAST_PRELIMINARY + ANNULLED_CAST),
    )
    for mask, total in groups:
        cast[mask] = apportion(total, weights[mask])
    if np.any(cast > geo.registered * 0.95) or np.any(cast < 10):
        raise AssertionError("synthesised turnout out of range; change the seed or weights")
    return cast


def _share_targets() -> tuple[np.ndarray, np.ndarray]:
    """Preliminary and final percentages: 21 parties, against-all (ballot order)."""
    preliminary = np.array([p for _, p, _ in PARTIES] + [AGAINST_ALL_PRELIMINARY])
    fixed = sum(f for _, _, f in PARTIES if f is not None)
    others = sum(p for _, p, f in PARTIES if f is None)
    scale = (PARTIES_FINAL_SUM - fixed) / others
    final = [f if f is not None else round(p * scale, 2) for _, p, f in PARTIES]
    return preliminary, np.array([*final, AGAINST_ALL_FINAL])


def _vote_targets(shares: np.ndarray, cast: int) -> np.ndarray:
    """Votes per choice whose published percentage rounds back to `shares`, + invalid."""
    votes = np.rint(shares / 100 * cast).astype(np.int64)
    return np.append(votes, cast - votes.sum())


def _party_list_counts(
    rng: np.random.Generator,
    geo: _Geography,
    cast: np.ndarray,
    late: np.ndarray,
    annulled: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Automatic and manual [votes 1..21, against-all, invalid] per precinct."""
    prelim_shares, final_shares = _share_targets()
    invalid_share = 100 - final_shares.sum()
    national = np.append(final_shares, invalid_share) / 100
    n_cols = len(national)
    strength = np.ones((len(REGIONS), n_cols))
    for position, multipliers in REGIONAL_STRENGTH.items():
        strength[:, position - 1] = multipliers
    strength[:, n_cols - 2] = AGAINST_ALL_STRENGTH
    strength[:, n_cols - 1] = INVALID_STRENGTH
    # unnamed small parties vary by region too, just less predictably
    noise = rng.lognormal(0.0, 0.25, strength.shape)
    named = [p - 1 for p in REGIONAL_STRENGTH] + [n_cols - 2, n_cols - 1]
    noise[:, named] = 1.0
    strength *= noise
    seed = np.zeros((len(cast), n_cols))
    for r in range(len(REGIONS)):
        rows = np.flatnonzero(geo.region_of == r)
        mean = national * strength[r]
        seed[rows] = rng.dirichlet(mean / mean.sum() * 400, len(rows))
    seed *= cast[:, None]

    manual = np.zeros((len(cast), n_cols), dtype=np.int64)
    counted = ~annulled
    manual[counted] = integer_table(
        seed[counted], cast[counted], _vote_targets(final_shares, CAST_FINAL)
    )
    # The night's automatic counts differ from the hand count: the machines rejected more
    # ballots as invalid, and each precinct differs a little.
    jitter = rng.lognormal(0.0, 0.04, seed.shape)
    auto_seed = np.where(counted[:, None], manual + 0.5, seed) * jitter
    automatic = np.zeros_like(manual)
    on_time = ~late
    automatic[on_time] = integer_table(
        auto_seed[on_time], cast[on_time], _vote_targets(prelim_shares, CAST_PRELIMINARY)
    )
    ratio = automatic[on_time].sum(axis=0) / np.maximum(manual[on_time].sum(axis=0), 1)
    automatic[late] = integer_rows(auto_seed[late] * ratio, cast[late])
    # the unused manual rows of annulled precincts mirror their automatic counts
    manual[annulled] = automatic[annulled]
    return automatic, manual


def _matrix(issued: np.ndarray, cast: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Contest matrix [issued, cast, invalid, choices..., against-all] from [choices, aa, inv]."""
    return np.column_stack((issued, cast, counts[:, -1], counts[:, :-1])).astype(np.int64)


def _list_contest(
    geo: _Geography,
    issued: np.ndarray,
    cast: np.ndarray,
    automatic: np.ndarray,
    manual: np.ndarray,
) -> Contest:
    divisions: dict[str, Division] = {}
    n = len(geo.precinct_ids)
    region_ids = [region.region_id for region in REGIONS]
    divisions["0"] = Division(
        "0", "country", "Кыргызская Республика", "Кыргыз Республикасы", None,
        tuple(region_ids), 0, n,
    )
    for r, region in enumerate(REGIONS):
        rows = np.flatnonzero(geo.region_of == r)
        start, stop = int(rows[0]), int(rows[-1]) + 1
        district_ids = [
            f"{region.region_id}-{k + 1:02d}"
            for k in range(len([d for d in geo.district_ranges if d[0] == r]))
        ]
        if district_ids:
            children = tuple(district_ids)
            ranges = [(s, e) for rr, s, e in geo.district_ranges if rr == r]
            for district_id, (name_ru, name_kg), (d_start, d_stop) in zip(
                district_ids, region.districts, ranges, strict=True
            ):
                divisions[district_id] = Division(
                    district_id, "district", name_ru, name_kg, region.region_id,
                    tuple(geo.precinct_ids[d_start:d_stop]), d_start, d_stop,
                )
                for i in range(d_start, d_stop):
                    _add_precinct(divisions, geo, i, district_id, i)
        else:
            children = tuple(geo.precinct_ids[start:stop])
            for i in range(start, stop):
                _add_precinct(divisions, geo, i, region.region_id, i)
        divisions[region.region_id] = Division(
            region.region_id, "region", region.name_ru, region.name_kg, "0", children, start, stop
        )
    choices = tuple(Choice(i + 1, name) for i, (name, _, _) in enumerate(PARTIES))
    return Contest(
        contest_id="list",
        name_ru="Единый избирательный округ (по партийным спискам)",
        name_kg="Бирдиктүү шайлоо округу (партиялык тизмелер боюнча)",
        seats=54,
        choices=choices,
        root_id="0",
        divisions=_in_page_order(divisions, "0"),
        precinct_rows=np.arange(n),
        automatic=_matrix(issued, cast, automatic),
        manual=_matrix(issued, cast, manual),
    )


def _add_precinct(
    divisions: dict[str, Division], geo: _Geography, i: int, parent_id: str, row: int
) -> None:
    name_ru, name_kg = geo.precinct_names[i]
    precinct_id = geo.precinct_ids[i]
    divisions[precinct_id] = Division(
        precinct_id, "precinct", name_ru, name_kg, parent_id, (), row, row + 1
    )


def _in_page_order(divisions: dict[str, Division], root_id: str) -> dict[str, Division]:
    """The same divisions, ordered depth-first from the root (as a crawler meets them)."""
    ordered: dict[str, Division] = {}
    stack = [root_id]
    while stack:
        division = divisions[stack.pop()]
        ordered[division.division_id] = division
        stack.extend(reversed(division.children))
    return ordered


def _shuffled(rng: np.random.Generator, rows: np.ndarray, geo: _Geography) -> np.ndarray:
    """Arrival order of protocols: cities first on average, the rest shuffled."""
    urban_first = np.isin(geo.region_of[rows], [0, 1]).astype(float)
    keys = rng.random(len(rows)) - 0.3 * urban_first
    return rows[np.argsort(keys, kind="stable")]


def _recount_order(rng: np.random.Generator, geo: _Geography, annulled: np.ndarray) -> np.ndarray:
    """Hand recount goes district commission by commission; annulled precincts never."""
    groups = [np.arange(start, stop) for _, start, stop in geo.district_ranges]
    groups.append(np.flatnonzero(geo.region_of == len(REGIONS) - 1))
    order = np.concatenate([groups[int(g)] for g in rng.permutation(len(groups))])
    return order[~annulled[order]]


def _stem(root: str) -> str:
    """The stem Russian-style surnames and patronymics add -в/-вич to: Осмоно-, Турдубае-."""
    if root.endswith("й"):
        return root[:-1] + "е"
    return root + ("е" if root[-1] in "аеиоуыэюяөү" else "о")


def _candidate_names(rng: np.random.Generator, count: int) -> list[str]:
    names: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < count:
        kind = rng.random()
        root = ROOTS[int(rng.integers(len(ROOTS)))]
        father = ROOTS[int(rng.integers(len(ROOTS)))]
        if kind < 0.08:
            name = RUSSIAN_NAMES[int(rng.integers(len(RUSSIAN_NAMES)))]
        elif kind < 0.25:
            name = f"{father} уулу {MALE_NAMES[int(rng.integers(len(MALE_NAMES)))]}"
        elif kind < 0.35:
            name = f"{father} кызы {FEMALE_NAMES[int(rng.integers(len(FEMALE_NAMES)))]}"
        elif kind < 0.55:
            given = FEMALE_NAMES[int(rng.integers(len(FEMALE_NAMES)))]
            name = f"{_stem(root)}ва {given} {_stem(father)}вна"
        else:
            given = MALE_NAMES[int(rng.integers(len(MALE_NAMES)))]
            name = f"{_stem(root)}в {given} {_stem(father)}вич"
        if name not in names:
            names.add(name)
            ordered.append(name)
    return ordered


def _okrug_contests(
    rng: np.random.Generator,
    geo: _Geography,
    issued: np.ndarray,
    cast: np.ndarray,
    annulled: np.ndarray,
) -> list[Contest]:
    """36 single-mandate contests over the in-country precincts (contiguous chunks)."""
    contests: list[Contest] = []
    number = 0
    for r, region in enumerate(REGIONS):
        if not region.okrugs:
            continue
        rows = np.flatnonzero(geo.region_of == r)
        if r == 0:  # Bishkek's four okrugs are its four district commissions
            chunks = [np.arange(s, e) for rr, s, e in geo.district_ranges if rr == 0]
        else:
            chunks = np.array_split(rows, region.okrugs)
        for k, chunk in enumerate(chunks):
            number += 1
            contest_id = f"okrug-{number}"
            label = f" ({BISHKEK_OKRUG_NAMES[k]})" if r == 0 else ""
            contests.append(
                _okrug_contest(
                    rng, geo, contest_id, number, label, chunk, issued, cast, annulled,
                    against_all_wins=contest_id in AGAINST_ALL_WINS,
                )
            )
    return contests


def _okrug_contest(
    rng: np.random.Generator,
    geo: _Geography,
    contest_id: str,
    number: int,
    label: str,
    rows: np.ndarray,
    issued: np.ndarray,
    cast: np.ndarray,
    annulled: np.ndarray,
    *,
    against_all_wins: bool,
) -> Contest:
    n_candidates = int(rng.integers(5, 16))
    strength = rng.dirichlet(np.full(n_candidates, 0.9))
    against_all = 0.30 if against_all_wins else rng.uniform(0.02, 0.07)
    invalid = rng.uniform(0.03, 0.07)
    mean = np.concatenate((strength * (1 - against_all - invalid), [against_all, invalid]))
    pvals = rng.dirichlet(mean * 300, len(rows))
    automatic = rng.multinomial(cast[rows], pvals).astype(np.int64)
    # the hand count accepts some ballots the machines rejected
    accepted = rng.binomial(automatic[:, -1], 0.35)
    valid_p = pvals[:, :-1] / pvals[:, :-1].sum(axis=1, keepdims=True)
    manual = automatic.copy()
    manual[:, :-1] += rng.multinomial(accepted, valid_p)
    manual[:, -1] -= accepted
    # who wins is part of the story: against-all tops two Bishkek okrugs and no other
    final_totals = manual[~annulled[rows]].sum(axis=0)[:-1]
    leader = int(np.argmax(final_totals[:-1]))
    aa = n_candidates
    if against_all_wins != (final_totals[aa] > final_totals[leader]):
        for matrix in (automatic, manual):
            matrix[:, [leader, aa]] = matrix[:, [aa, leader]]
    names = _candidate_names(rng, n_candidates)
    root_ru = f"Одномандатный избирательный округ №{number}{label}"
    root_kg = f"№{number} бир мандаттуу шайлоо округу{label}"
    divisions: dict[str, Division] = {
        "0": Division(
            "0", "constituency", root_ru, root_kg, None,
            tuple(geo.precinct_ids[i] for i in rows), 0, len(rows),
        )
    }
    for local, i in enumerate(rows):
        _add_precinct(divisions, geo, int(i), "0", local)
    return Contest(
        contest_id=contest_id,
        name_ru=root_ru,
        name_kg=root_kg,
        seats=1,
        choices=tuple(Choice(k + 1, name) for k, name in enumerate(names)),
        root_id="0",
        divisions=divisions,
        precinct_rows=np.asarray(rows),
        automatic=_matrix(issued[rows], cast[rows], automatic),
        manual=_matrix(issued[rows], cast[rows], manual),
    )


def _snapshot(
    index: int,
    step: tuple[str, str, int, int, str, str],
    annulled_ids: frozenset[str],
    duplicate: DuplicateRow,
) -> Snapshot:
    label, when, counted, recounted, mode, description = step
    annulment_index = [s[0] for s in TIMELINE].index("annulment")
    return Snapshot(
        index=index,
        label=label,
        portal_time=datetime.fromisoformat(when).replace(tzinfo=PORTAL_TZ),
        description=description,
        mode=mode,
        precincts_counted=counted,
        precincts_recounted=recounted,
        annulled=annulled_ids if index >= annulment_index else frozenset(),
        doubled_positions=LEADING_POSITIONS if label == "formula-error" else frozenset(),
        duplicate=duplicate if label == "duplicate-candidate" else None,
        retry_after=60 if mode == MODE_UNAVAILABLE else None,
    )
