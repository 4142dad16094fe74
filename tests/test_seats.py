"""Seat allocation methods on textbook examples (ties included) and on kg2021's final shares."""

from __future__ import annotations

import pytest

from etl.elections import load_election
from etl.seats import ContestLine, allocate, allocate_contest

# Wikipedia, "D'Hondt method" / "Sainte-Laguë method": 4 parties, 8 seats.
WIKI_8 = {1: 100_000, 2: 80_000, 3: 30_000, 4: 20_000}
# Wikipedia, "Webster/Sainte-Laguë method": 3 parties, 7 seats.
WIKI_7 = {1: 53_000, 2: 24_000, 3: 23_000}
# Wikipedia, "Largest remainder method": 6 parties, 100,000 votes, 10 seats.
WIKI_LR = {1: 47_000, 2: 16_000, 3: 15_800, 4: 12_000, 5: 6_100, 6: 3_100}


@pytest.mark.parametrize(
    ("votes", "seats", "method", "expected"),
    [
        (WIKI_8, 8, "dhondt", {1: 4, 2: 3, 3: 1, 4: 0}),
        (WIKI_8, 8, "sainte_lague", {1: 3, 2: 3, 3: 1, 4: 1}),
        (WIKI_7, 7, "dhondt", {1: 4, 2: 2, 3: 1}),
        (WIKI_7, 7, "sainte_lague", {1: 3, 2: 2, 3: 2}),
        (WIKI_LR, 10, "largest_remainder_hare", {1: 5, 2: 2, 3: 1, 4: 1, 5: 1, 6: 0}),
    ],
)
def test_textbook_examples(votes, seats, method, expected):
    assert allocate(votes, seats, method) == expected


@pytest.mark.parametrize("method", ["largest_remainder_hare", "dhondt", "sainte_lague"])
def test_exact_tie_goes_to_lower_ballot_number(method):
    # Three equal parties, two seats: the law does not say; the lower numbers win.
    assert allocate({3: 10, 1: 10, 2: 10}, 2, method) == {1: 1, 2: 1, 3: 0}


def test_dhondt_equal_quotients_go_to_more_votes():
    # Second seat: A's 20/2 = 10 ties with B's 10/1; A has more votes and takes it.
    assert allocate({2: 20, 1: 10}, 2, "dhondt") == {1: 0, 2: 2}


def test_sainte_lague_equal_quotients_go_to_more_votes():
    # Second seat: A's 30/3 = 10 ties with B's 10/1.
    assert allocate({2: 30, 1: 10}, 2, "sainte_lague") == {1: 0, 2: 2}


def test_hare_equal_remainders_go_to_more_votes():
    # Quota 10: 2.5 and 1.5 seats, equal remainders; the party with more votes wins.
    assert allocate({1: 15, 2: 25}, 4, "largest_remainder_hare") == {1: 1, 2: 3}


def test_hare_remainders_are_exact_not_floating_point():
    # 1/3 of 3 seats each: floating point would see 0.9999… remainders and misallocate.
    assert allocate({1: 1, 2: 1, 3: 1}, 3, "largest_remainder_hare") == {1: 1, 2: 1, 3: 1}


@pytest.mark.parametrize("method", ["largest_remainder_hare", "dhondt", "sainte_lague"])
def test_every_seat_is_given_and_no_votes_means_no_seats(method):
    assert sum(allocate(WIKI_LR, 54, method).values()) == 54
    assert allocate({1: 0, 2: 0}, 5, method) == {1: 0, 2: 0}
    assert allocate({}, 5, method) == {}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown seat allocation method"):
        allocate({1: 1}, 1, "imperiali")
    with pytest.raises(ValueError, match="votes must be >= 0"):
        allocate({1: -1}, 1, "dhondt")
    with pytest.raises(ValueError, match="seats must be >= 0"):
        allocate({1: 1}, -1, "dhondt")


# FACTS.md: the final shares (% of the 1,281,622 who took part) of the six passing parties
# and the preliminary shares of the others (all below 5%), against all 2.15%.
FINAL_TOOK_PART = 1_281_622
FINAL_PCT = {21: 17.32, 9: 13.61, 8: 11.00, 3: 8.35, 2: 7.04, 5: 6.17}
OTHERS_PCT = {
    1: 3.48, 4: 0.62, 6: 0.62, 7: 0.95, 10: 4.01, 11: 1.54, 12: 0.41, 13: 0.44, 14: 3.21,
    15: 0.46, 16: 0.96, 17: 2.48, 18: 4.46, 19: 0.46, 20: 0.71,
}
EXPECTED_SEATS = {21: 15, 9: 12, 8: 9, 3: 7, 2: 6, 5: 5}


def kg2021_final_lines() -> list[ContestLine]:
    """The party-list root lines of the final result, votes derived from the shares."""
    shares = {**FINAL_PCT, **OTHERS_PCT}
    lines = [
        ContestLine(
            line_no=position - 1,
            choice_position=position,
            choice_name=f"party {position}",
            is_against_all=False,
            votes=round(shares[position] * FINAL_TOOK_PART / 100),
        )
        for position in range(1, 22)
    ]
    against_all = round(2.15 * FINAL_TOOK_PART / 100)
    lines.append(ContestLine(21, None, "Против всех", True, against_all))
    return lines


@pytest.mark.parametrize("method", ["largest_remainder_hare", "dhondt", "sainte_lague"])
def test_kg2021_final_shares_give_the_cec_seats(method):
    passing = {p: round(pct * FINAL_TOOK_PART / 100) for p, pct in FINAL_PCT.items()}
    assert allocate(passing, 54, method) == EXPECTED_SEATS


def test_kg2021_contest_from_the_rule_file():
    rules = load_election("jk2021").contest("list")
    seats = allocate_contest(
        kg2021_final_lines(),
        kind=rules.kind,
        seats=rules.seats,
        method=rules.method,
        threshold_pct=rules.threshold_pct,
        threshold_base=rules.threshold_base,
        ballots_cast=FINAL_TOOK_PART,
        valid=None,
    )
    won = {line.choice_position: line.seats for line in seats if not line.is_against_all}
    assert won == {p: EXPECTED_SEATS.get(p, 0) for p in range(1, 22)}
    assert {line.choice_position for line in seats if line.passed_threshold} == set(FINAL_PCT)
    against_all = next(line for line in seats if line.is_against_all)
    assert (against_all.seats, against_all.passed_threshold) == (0, None)
    assert against_all.note == "against all takes no seats"
    ata_jurt = next(line for line in seats if line.choice_position == 21)
    assert ata_jurt.pct == pytest.approx(17.32, abs=0.001)


def _party_list(lines, **overrides):
    rules = {
        "kind": "party_list",
        "seats": 10,
        "method": "largest_remainder_hare",
        "threshold_pct": 5.0,
        "threshold_base": "ballots_cast",
        "ballots_cast": 1000,
        "valid": 900,
    }
    return allocate_contest(lines, **{**rules, **overrides})


def test_threshold_is_not_less_than_and_uses_its_base():
    lines = [ContestLine(0, 1, "a", False, 50), ContestLine(1, 2, "b", False, 46)]
    # 50 of 1000 cast is exactly 5%: passes; 46 is 4.6% of cast but 5.1% of valid.
    by_cast = _party_list(lines)
    assert [line.passed_threshold for line in by_cast] == [True, False]
    assert [line.seats for line in by_cast] == [10, 0]
    by_valid = _party_list(lines, threshold_base="valid")
    assert [line.passed_threshold for line in by_valid] == [True, True]
    assert by_valid[1].pct == pytest.approx(46 * 100 / 900)


def test_missing_base_leaves_seats_undecided():
    lines = [ContestLine(0, 1, "a", False, 50)]
    (line,) = _party_list(lines, ballots_cast=None)
    assert (line.passed_threshold, line.seats) == (None, None)
    assert line.note == "ballots_cast missing: threshold and seats undecided"


def test_duplicate_ballot_numbers_are_refused():
    lines = [ContestLine(0, 1, "a", False, 50), ContestLine(1, 1, "a", False, 50)]
    with pytest.raises(ValueError, match="unique"):
        _party_list(lines)


def _single(lines):
    return allocate_contest(
        lines,
        kind="single_mandate",
        seats=1,
        method=None,
        threshold_pct=0.0,
        threshold_base="ballots_cast",
        ballots_cast=100,
        valid=90,
    )


def test_single_mandate_winner_takes_the_seat():
    lines = [
        ContestLine(0, 1, "a", False, 30),
        ContestLine(1, 2, "b", False, 40),
        ContestLine(2, None, "Против всех", True, 20),
    ]
    assert [line.seats for line in _single(lines)] == [0, 1, 0]


def test_single_mandate_against_all_first_leaves_the_seat_vacant():
    lines = [
        ContestLine(0, 1, "a", False, 30),
        ContestLine(1, None, "Против всех", True, 45),
    ]
    result = _single(lines)
    assert [line.seats for line in result] == [0, 0]
    assert {line.note for line in result} == {"vacant: against all has most votes"}


def test_single_mandate_tie_is_decided_and_said():
    lines = [
        ContestLine(0, 2, "b", False, 40),
        ContestLine(1, 1, "a", False, 40),
        ContestLine(2, None, "Против всех", True, 40),
    ]
    result = _single(lines)
    assert [line.seats for line in result] == [0, 1, 0]
    assert result[1].note is not None and result[1].note.startswith("tie for most votes")
