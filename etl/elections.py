"""Election rules kept as data: one TOML file per election in `etl.config.elections_dir()`.

A file names the election, its scraping window and, per contest, the seats, the method and
the threshold (see `elections/jk2021.toml`). Contests not listed take `[default_contest]`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from etl.config import elections_dir
from etl.identifiers import InvalidIdentifierError, checked_id
from etl.seats import METHODS, SINGLE_MANDATE, THRESHOLD_BASES

KINDS: tuple[str, ...] = ("party_list", SINGLE_MANDATE)
SCHEDULE_MODES: tuple[str, ...] = ("watch", "cron")
POLL_SECONDS_RANGE = (1.0, 300.0)


class ElectionRulesError(ValueError):
    """A rule file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ContestRules:
    """How one contest's seats are shared. `method` is None for single-mandate contests."""

    kind: str
    seats: int
    method: str | None = None
    threshold_pct: float = 0.0
    threshold_base: str = "ballots_cast"


@dataclass(frozen=True)
class Schedule:
    """When the pipeline scrapes this election inside [start, end).

    `mode` "watch": a trigger polls the election page every `poll_seconds` (conditional
    requests) and a DAG run starts when the portal changed; "cron": a run every `cron` tick
    (the fallback where the triggerer cannot run or the portal ignores conditional requests).
    """

    start: datetime
    end: datetime
    cron: str | None
    mode: str = "cron"
    poll_seconds: float = 5.0

    def contains(self, moment: datetime) -> bool:
        """True when `moment` (timezone-aware) is inside the window."""
        return self.start <= moment < self.end


@dataclass(frozen=True)
class ElectionRules:
    """One election's rule file."""

    election_id: str
    name: str
    lang: str
    schedule: Schedule | None
    contests: Mapping[str, ContestRules]
    default_contest: ContestRules | None
    path: Path

    def contest(self, contest_id: str) -> ContestRules:
        """The rules of `contest_id`: its own section, else `[default_contest]`."""
        rules = self.contests.get(contest_id, self.default_contest)
        if rules is None:
            raise KeyError(
                f"{self.path}: no [contests.{contest_id}] and no [default_contest]"
            )
        return rules


def load_election(election_id: str, directory: Path | None = None) -> ElectionRules:
    """Read `<directory>/<election_id>.toml` (directory defaults to `elections_dir()`)."""
    checked_id(election_id, "election id")
    path = (directory or elections_dir()) / f"{election_id}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no rule file for election {election_id!r}: {path} is missing")
    rules = parse_election_file(path)
    if rules.election_id != election_id:
        raise ElectionRulesError(
            f"{path}: election_id is {rules.election_id!r}, the file name says {election_id!r}"
        )
    return rules


def all_elections(directory: Path | None = None) -> tuple[ElectionRules, ...]:
    """Every rule file in the directory, ordered by election_id; the first broken one raises."""
    rules, broken = read_elections(directory)
    if broken:
        raise broken[0]
    return rules


def read_elections(
    directory: Path | None = None,
) -> tuple[tuple[ElectionRules, ...], tuple[ElectionRulesError, ...]]:
    """Every rule file in the directory: the valid ones (by election_id) and the errors.

    One broken file must not take the other elections down (the DAG file builds a DAG per
    valid file and reports each broken one as its own import error).
    """
    valid: list[ElectionRules] = []
    broken: list[ElectionRulesError] = []
    for path in sorted((directory or elections_dir()).glob("*.toml")):
        try:
            valid.append(parse_election_file(path))
        except ElectionRulesError as error:
            broken.append(error)
        except (OSError, KeyError, TypeError, ValueError) as error:
            broken.append(ElectionRulesError(f"{path}: {type(error).__name__}: {error}"))
    ids = [r.election_id for r in valid]
    for rules in valid:
        if ids.count(rules.election_id) > 1:
            broken.append(ElectionRulesError(
                f"{rules.path}: election_id {rules.election_id!r} is declared by "
                f"{ids.count(rules.election_id)} rule files"))
    valid = [r for r in valid if ids.count(r.election_id) == 1]
    return tuple(sorted(valid, key=lambda r: r.election_id)), tuple(broken)


def parse_election_file(path: Path) -> ElectionRules:
    """Parse and validate one rule file."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ElectionRulesError(f"{path}: not valid TOML: {error}") from error
    election_id = _required(document, "election_id", str, path)
    try:
        checked_id(election_id, "election_id")
    except InvalidIdentifierError as error:
        raise ElectionRulesError(f"{path}: {error}") from error
    contests = {
        contest_id: _contest_rules(section, f"contests.{contest_id}", path)
        for contest_id, section in _table(document, "contests", path).items()
    }
    default = document.get("default_contest")
    return ElectionRules(
        election_id=election_id,
        name=str(document.get("name", election_id)),
        lang=str(document.get("lang", "ru")),
        schedule=_schedule(document["schedule"], path) if "schedule" in document else None,
        contests=MappingProxyType(contests),
        default_contest=(
            _contest_rules(default, "default_contest", path) if default is not None else None
        ),
        path=path,
    )


def _table(document: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, Mapping):
        raise ElectionRulesError(f"{path}: [{key}] must be a table")
    return value


def _required(section: Mapping[str, Any], key: str, kind: type, path: Path, where: str = "") -> Any:
    value = section.get(key)
    # bool is an int in Python; a seat count of `true` is a typo, not 1.
    if value is None or not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        name = f"{where}.{key}" if where else key
        raise ElectionRulesError(f"{path}: {name} must be a {kind.__name__}, got {value!r}")
    return value


def _contest_rules(section: Any, where: str, path: Path) -> ContestRules:
    if not isinstance(section, Mapping):
        raise ElectionRulesError(f"{path}: [{where}] must be a table")
    kind = _required(section, "kind", str, path, where)
    if kind not in KINDS:
        raise ElectionRulesError(f"{path}: {where}.kind {kind!r} is not one of {KINDS}")
    seats = _required(section, "seats", int, path, where)
    if seats < 1:
        raise ElectionRulesError(f"{path}: {where}.seats must be at least 1, got {seats}")
    if kind == SINGLE_MANDATE:
        if seats != 1:
            raise ElectionRulesError(f"{path}: {where} is single_mandate but has {seats} seats")
        return ContestRules(kind=kind, seats=1)
    method = section.get("method", "largest_remainder_hare")
    if method not in METHODS:
        raise ElectionRulesError(f"{path}: {where}.method {method!r} is not one of {METHODS}")
    threshold = section.get("threshold_pct", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ElectionRulesError(f"{path}: {where}.threshold_pct must be a number")
    if not 0 <= threshold < 100:
        raise ElectionRulesError(f"{path}: {where}.threshold_pct must be in [0, 100)")
    base = section.get("threshold_base", "ballots_cast")
    if base not in THRESHOLD_BASES:
        raise ElectionRulesError(
            f"{path}: {where}.threshold_base {base!r} is not one of {THRESHOLD_BASES}"
        )
    return ContestRules(
        kind=kind, seats=seats, method=method, threshold_pct=float(threshold), threshold_base=base
    )


def _schedule(section: Any, path: Path) -> Schedule:
    if not isinstance(section, Mapping):
        raise ElectionRulesError(f"{path}: [schedule] must be a table")
    moments = {}
    for key in ("start", "end"):
        value = section.get(key)
        # Quoted ISO strings and TOML's own offset date-times are both accepted.
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError as error:
                raise ElectionRulesError(f"{path}: schedule.{key}: {error}") from error
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ElectionRulesError(
                f"{path}: schedule.{key} must be a date-time with a UTC offset, got {value!r}"
            )
        moment = value
        moments[key] = moment
    if moments["end"] <= moments["start"]:
        raise ElectionRulesError(f"{path}: schedule.end must be after schedule.start")
    # Files written before event-driven scheduling have a cron and no mode: they keep it.
    mode = section.get("mode", "cron")
    if mode not in SCHEDULE_MODES:
        raise ElectionRulesError(f"{path}: schedule.mode {mode!r} is not one of {SCHEDULE_MODES}")
    cron = (_required(section, "cron", str, path, "schedule") if mode == "cron" or "cron" in section
            else None)
    poll = section.get("poll_seconds", 5.0)
    low, high = POLL_SECONDS_RANGE
    if isinstance(poll, bool) or not isinstance(poll, int | float) or not low <= poll <= high:
        raise ElectionRulesError(
            f"{path}: schedule.poll_seconds must be a number of seconds in [{low:g}, {high:g}], "
            f"got {poll!r}")
    return Schedule(start=moments["start"], end=moments["end"], cron=cron, mode=mode,
                    poll_seconds=float(poll))
