"""Seat allocation: largest remainder (Hare), D'Hondt and Sainte-Laguë, and a contest's seats.

Ties are broken deterministically, because the law leaves them open (the Kyrgyz law on
elections does not say how a tie for the last seat is settled; other laws draw lots):
first the choice with more votes wins, then the lower key, i.e. the lower ballot number.
The threshold is not applied here: callers pass only the choices that passed it
(`allocate_contest` does that from the election rules).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, TypeVar

METHODS: tuple[str, ...] = ("largest_remainder_hare", "dhondt", "sainte_lague")
SINGLE_MANDATE = "single_mandate"
THRESHOLD_BASES: tuple[str, ...] = ("ballots_cast", "valid")


class _Orderable(Hashable, Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Orderable)


def allocate(votes: Mapping[K, int], seats: int, method: str) -> dict[K, int]:
    """Share `seats` among the keys of `votes` by `method` (one of `METHODS`).

    Every key appears in the answer. With no votes at all nothing can be shared and every
    key gets 0. Ties: more votes first, then the lower key (see the module docstring).
    """
    if seats < 0:
        raise ValueError(f"seats must be >= 0, got {seats}")
    negative = {key: count for key, count in votes.items() if count < 0}
    if negative:
        raise ValueError(f"votes must be >= 0, got {negative}")
    if method == "largest_remainder_hare":
        return _largest_remainder_hare(votes, seats)
    if method == "dhondt":
        return _highest_averages(votes, seats, lambda won: 2 * won + 2)
    if method == "sainte_lague":
        return _highest_averages(votes, seats, lambda won: 2 * won + 1)
    raise ValueError(f"unknown seat allocation method {method!r}; known: {', '.join(METHODS)}")


def _tie_order(votes: Mapping[K, int]) -> list[K]:
    """Keys in the order ties are decided: more votes first, then the lower key."""
    return sorted(sorted(votes), key=lambda key: votes[key], reverse=True)


def _largest_remainder_hare(votes: Mapping[K, int], seats: int) -> dict[K, int]:
    total = sum(votes.values())
    if total == 0:
        return dict.fromkeys(votes, 0)
    # votes / (total / seats) = votes * seats / total: integer arithmetic keeps the
    # remainders exact, so two equal remainders really compare equal.
    won = {key: count * seats // total for key, count in votes.items()}
    remainder = {key: count * seats % total for key, count in votes.items()}
    left = seats - sum(won.values())
    by_remainder = sorted(_tie_order(votes), key=lambda key: remainder[key], reverse=True)
    for key in by_remainder[:left]:
        won[key] += 1
    return won


def _highest_averages(
    votes: Mapping[K, int], seats: int, divisor: Callable[[int], int]
) -> dict[K, int]:
    """Highest averages; `divisor(won)` is twice the divisor (D'Hondt 1,2,3…; S-L 1,3,5…)."""
    won = dict.fromkeys(votes, 0)
    if sum(votes.values()) == 0:
        return won
    order = _tie_order(votes)
    for _ in range(seats):
        # max() keeps the first of equal quotients, and `order` puts the tie winner first.
        best = max(order, key=lambda key: Fraction(votes[key], divisor(won[key])))
        won[best] += 1
    return won


@dataclass(frozen=True)
class ContestLine:
    """One ballot line of a contest's root division, as the seat allocation sees it."""

    line_no: int
    choice_position: int | None
    choice_name: str | None
    is_against_all: bool
    votes: int | None


@dataclass(frozen=True)
class SeatLine:
    """One ballot line's share of a contest's seats; `note` explains what is not obvious."""

    line_no: int
    choice_position: int | None
    choice_name: str | None
    is_against_all: bool
    votes: int | None
    pct: float | None
    passed_threshold: bool | None
    seats: int | None
    note: str | None


def allocate_contest(
    lines: Iterable[ContestLine],
    *,
    kind: str,
    seats: int,
    method: str | None,
    threshold_pct: float,
    threshold_base: str,
    ballots_cast: int | None,
    valid: int | None,
) -> list[SeatLine]:
    """Seats of one contest from its root division's lines and the contest's rules.

    Party list: the threshold is `threshold_pct` of `threshold_base` (passing means at least
    that share); against-all never takes a seat. Single mandate: most votes wins the seat;
    where against-all has most votes the seat stays vacant (every line gets 0).
    """
    lines = list(lines)
    if threshold_base not in THRESHOLD_BASES:
        raise ValueError(f"unknown threshold_base {threshold_base!r}; known: {THRESHOLD_BASES}")
    base = ballots_cast if threshold_base == "ballots_cast" else valid
    positions = [line.choice_position for line in lines if not line.is_against_all]
    if None in positions or len(set(positions)) != len(positions):
        raise ValueError(
            f"ballot numbers must be present and unique to allocate seats, got {positions}"
        )

    def pct(line: ContestLine) -> float | None:
        if line.votes is None or not base:
            return None
        return line.votes * 100 / base

    if kind == SINGLE_MANDATE:
        return _single_mandate(lines, seats, pct)
    if kind != "party_list":
        raise ValueError(f"unknown contest kind {kind!r}; known: party_list, {SINGLE_MANDATE}")
    if method is None:
        raise ValueError("a party_list contest needs a seat allocation method")
    if not base:
        # Without the base the threshold cannot be decided; say so rather than guess.
        note = f"{threshold_base} missing: threshold and seats undecided"
        return [_seat_line(line, pct(line), None, None, note) for line in lines]

    def passed(line: ContestLine) -> bool:
        # "Not less than" the threshold: exactly 5.00% passes. Integer-safe comparison.
        return line.votes is not None and line.votes * 100 >= threshold_pct * base

    passing: dict[int, int] = {}
    for line in lines:
        if line.choice_position is not None and not line.is_against_all and passed(line):
            passing[line.choice_position] = line.votes or 0
    won = allocate(passing, seats, method)
    result = []
    for line in lines:
        if line.is_against_all:
            result.append(_seat_line(line, pct(line), None, 0, "against all takes no seats"))
        else:
            seats_won = won.get(line.choice_position or 0, 0)
            result.append(_seat_line(line, pct(line), passed(line), seats_won, None))
    return result


def _single_mandate(
    lines: list[ContestLine], seats: int, pct: Callable[[ContestLine], float | None]
) -> list[SeatLine]:
    if seats != 1:
        raise ValueError(f"a single-mandate contest has 1 seat, the rules say {seats}")
    counted = [line for line in lines if line.votes is not None]
    if not counted or max(line.votes or 0 for line in counted) == 0:
        return [_seat_line(line, pct(line), None, 0, "no votes counted") for line in lines]
    top = max(line.votes or 0 for line in counted)
    leaders = [line for line in counted if line.votes == top]
    note = None
    if len(leaders) > 1:
        note = "tie for most votes: decided here by the lower ballot number, against-all last"
    # Candidates before against-all, then by ballot number: the module's tie rule.
    winner = min(
        leaders,
        key=lambda line: (line.is_against_all, line.choice_position or 0),
    )
    if winner.is_against_all:
        vacant = "vacant: against all has most votes"
        return [_seat_line(line, pct(line), None, 0, vacant) for line in lines]
    return [
        _seat_line(line, pct(line), None, int(line is winner), note if line is winner else None)
        for line in lines
    ]


def _seat_line(
    line: ContestLine,
    pct: float | None,
    passed_threshold: bool | None,
    seats: int | None,
    note: str | None,
) -> SeatLine:
    return SeatLine(
        line_no=line.line_no,
        choice_position=line.choice_position,
        choice_name=line.choice_name,
        is_against_all=line.is_against_all,
        votes=line.votes,
        pct=pct,
        passed_threshold=passed_threshold,
        seats=seats,
        note=note,
    )
