"""Election rule files: the shipped jk2021 file, defaults, and refusals of bad files."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from etl.elections import ElectionRulesError, all_elections, load_election


def test_jk2021_rules():
    rules = load_election("jk2021")
    party_list = rules.contest("list")
    assert (party_list.kind, party_list.seats, party_list.method) == (
        "party_list",
        54,
        "largest_remainder_hare",
    )
    assert (party_list.threshold_pct, party_list.threshold_base) == (5.0, "ballots_cast")
    okrug = rules.contest("okrug-7")
    assert (okrug.kind, okrug.seats, okrug.method) == ("single_mandate", 1, None)
    assert rules.schedule is not None
    assert rules.schedule.contains(datetime(2021, 11, 28, 15, 0, tzinfo=UTC))  # 21:00 +06
    assert not rules.schedule.contains(datetime(2021, 11, 28, 13, 59, tzinfo=UTC))
    assert "jk2021" in {r.election_id for r in all_elections()}


def test_elections_dir_comes_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "x2030.toml").write_text(
        'election_id = "x2030"\n[contests.list]\nkind = "party_list"\nseats = 7\n'
        'method = "dhondt"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("CEC_ELECTIONS_DIR", str(tmp_path))
    rules = load_election("x2030")
    assert rules.contest("list").method == "dhondt"
    assert rules.schedule is None
    with pytest.raises(KeyError, match="no \\[default_contest\\]"):
        rules.contest("okrug-1")
    assert [r.election_id for r in all_elections()] == ["x2030"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('election_id = "bad"\n[contests.list]\nkind = "party_list"\nseats = 5\n'
         'method = "imperiali"\n', "method 'imperiali'"),
        ('election_id = "bad"\n[contests.list]\nkind = "party_list"\nseats = true\n', "seats"),
        ('election_id = "bad"\n[contests.list]\nkind = "party_list"\nseats = 5\n'
         'threshold_base = "registered"\n', "threshold_base"),
        ('election_id = "bad"\n[default_contest]\nkind = "single_mandate"\nseats = 2\n',
         "single_mandate but has 2 seats"),
        ('election_id = "bad"\n[schedule]\nstart = "2021-11-28T20:00:00"\n'
         'end = "2021-11-29T20:00:00+06:00"\ncron = "* * * * *"\n', "UTC offset"),
        ('election_id = "bad"\n[schedule]\nstart = "2021-11-28T20:00:00+06:00"\n'
         'end = "2021-11-29T20:00:00+06:00"\nmode = "push"\n', "schedule.mode 'push'"),
        ('election_id = "bad"\n[schedule]\nstart = "2021-11-28T20:00:00+06:00"\n'
         'end = "2021-11-29T20:00:00+06:00"\nmode = "cron"\n', "schedule.cron must be"),
        ('election_id = "bad"\n[schedule]\nstart = "2021-11-28T20:00:00+06:00"\n'
         'end = "2021-11-29T20:00:00+06:00"\nmode = "watch"\npoll_seconds = 0.1\n',
         "poll_seconds must be"),
        ('election_id = "other"\n', "file name says 'bad'"),
        ("election_id = ", "not valid TOML"),
    ],
)
def test_bad_rule_files_are_refused_with_the_file_and_key(tmp_path, text, message):
    (tmp_path / "bad.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ElectionRulesError, match=message) as caught:
        load_election("bad", tmp_path)
    assert str(tmp_path / "bad.toml") in str(caught.value)


SCHEDULE_WINDOW = 'start = "2021-11-28T20:00:00+06:00"\nend = "2021-11-29T20:00:00+06:00"\n'


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # A file from before event-driven scheduling keeps its cron.
        ('cron = "*/5 * * * *"\n', ("cron", "*/5 * * * *", 5.0)),
        ('mode = "cron"\ncron = "* * * * *"\n', ("cron", "* * * * *", 5.0)),
        ('mode = "watch"\n', ("watch", None, 5.0)),
        ('mode = "watch"\npoll_seconds = 3\ncron = "*/5 * * * *"\n', ("watch", "*/5 * * * *", 3.0)),
    ],
)
def test_schedule_mode_watch_or_cron(tmp_path, schedule, expected):
    (tmp_path / "x2030.toml").write_text(
        f'election_id = "x2030"\n[schedule]\n{SCHEDULE_WINDOW}{schedule}', encoding="utf-8")
    rules = load_election("x2030", tmp_path)
    assert rules.schedule is not None
    assert (rules.schedule.mode, rules.schedule.cron, rules.schedule.poll_seconds) == expected


def test_jk2021_is_watched_with_a_cron_fallback():
    schedule = load_election("jk2021").schedule
    assert schedule is not None
    assert (schedule.mode, schedule.poll_seconds, schedule.cron) == ("watch", 3.0, "*/5 * * * *")


def test_missing_rule_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no rule file for election 'nope'"):
        load_election("nope", tmp_path)
