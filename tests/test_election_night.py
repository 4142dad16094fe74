"""Election night through the real Airflow DAG (`dag.test()`), the replica and DuckDB, with
alerts delivered to real webhook, Slack and SMTP receivers on loopback.

One replay (`python -m etl.demo`, the code behind `make run`) over the incident snapshots
of the kg2021 timeline; the tests below read what it left: the cycle log, the warehouse,
the alert log and what each receiver got.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from facts import FINAL_SEATS
from receivers import HttpReceiver, SmtpReceiver, alert_channel_env

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parent.parent
TIMELINE = ["counting-3", "formula-error", "withdrawn-maintenance", "withdrawn-503", "preliminary",
            "recount-4", "annulment", "final"]


@dataclass(frozen=True)
class Replay:
    """What one replay left behind."""

    stdout: str
    cycles: list[dict[str, Any]]  # one per DAG run, in order (the last repeats `final`)
    alerts: list[dict[str, Any]]  # data/alerts.jsonl
    webhook: list[dict[str, Any]]
    slack: list[str]
    mail_subjects: list[str]
    warehouse: Path


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    base = tmp_path_factory.mktemp("night")
    data = base / "data"
    with HttpReceiver() as webhook, HttpReceiver() as slack, SmtpReceiver() as smtp:
        env = os.environ | {
            "CEC_DATA_DIR": str(data),
        } | alert_channel_env(webhook, slack, smtp)
        labels = [arg for label in TIMELINE for arg in ("--label", label)]
        run = subprocess.run(
            [sys.executable, "-m", "etl.demo", "--airflow-home", str(base / "airflow_home"),
             *labels], env=env, cwd=REPO, capture_output=True, text=True, timeout=1200,
            check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        yield Replay(
            stdout=run.stdout,
            cycles=[json.loads(line) for line in (data / "cycles.jsonl").read_text().splitlines()],
            alerts=[json.loads(line) for line in (data / "alerts.jsonl").read_text().splitlines()],
            webhook=[post.json() for post in webhook.posts()],
            slack=[post.json()["text"] for post in slack.posts()],
            mail_subjects=[str(message["Subject"]) for message in smtp.messages],
            warehouse=data / "warehouse.duckdb",
        )


def cycle(replay: Replay, label: str) -> dict[str, Any]:
    return replay.cycles[TIMELINE.index(label)]


def query(replay: Replay, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(replay.warehouse), read_only=True) as db:
        return db.execute(sql).fetchall()


def test_one_dag_run_per_snapshot_and_a_timeline_printed(replay: Replay) -> None:
    assert len(replay.cycles) == len(TIMELINE) + 1
    for label in TIMELINE:
        assert label in replay.stdout
    assert "Seat allocation" in replay.stdout


def test_the_140_percent_snapshot_is_quarantined_and_alerted_once_on_every_channel(
        replay: Replay) -> None:
    formula = cycle(replay, "formula-error")
    assert formula["statuses"]["list"]["status"] == "quarantined"
    assert "C1" in formula["statuses"]["list"]["reason"]
    assert all(s["status"] == "published" for c, s in formula["statuses"].items() if c != "list")
    assert [a["kind"] for a in formula["alerts"]] == ["quarantined"]

    quarantined = [a for a in replay.alerts if a["kind"] == "quarantined"]
    assert len(quarantined) == 1 and quarantined[0]["contest_id"] == "list"
    assert "C1" in quarantined[0]["checks"] and "C4" in quarantined[0]["checks"]
    assert quarantined[0]["portal_updated_at"].startswith("2021-11-28T21:")
    assert quarantined[0]["report_path"].endswith(".html")
    assert len([p for p in replay.webhook if p["kind"] == "quarantined"]) == 1
    assert len([t for t in replay.slack if t.startswith(":rotating_light: *QUARANTINED list")]) == 1
    assert len([s for s in replay.mail_subjects if s.startswith("[CEC jk2021] QUARANTINED list")]) == 1
    # Kept for inspection, never published: absent from the history data teams read.
    snapshot = formula["snapshot_id"]
    kept = query(replay, f"SELECT count(*) FROM results_by_snapshot WHERE snapshot_id = '{snapshot}' "
                         "AND contest_id = 'list'")
    shown = query(replay, f"SELECT count(*) FROM results_history WHERE snapshot_id = '{snapshot}' "
                          "AND contest_id = 'list'")
    assert kept[0][0] > 0 and shown[0][0] == 0


def test_withdrawn_data_runs_end_cleanly_and_alert(replay: Replay) -> None:
    maintenance = cycle(replay, "withdrawn-maintenance")
    unavailable = cycle(replay, "withdrawn-503")
    assert maintenance["portal"] == unavailable["portal"] == "unavailable"
    assert "maintenance" in maintenance["reason"].lower() or "Ведутся" in maintenance["reason"]
    assert "503" in unavailable["reason"]
    # Alerted once for the streak (not again while the portal stays down).
    assert [a["kind"] for a in maintenance["alerts"]] == ["pipeline_failed"]
    assert unavailable["alerts"] == []
    assert len([p for p in replay.webhook if p["kind"] == "pipeline_failed"]) == 1


def test_the_86_96_percent_snapshot_publishes_without_a_problem_alert(replay: Replay) -> None:
    preliminary = cycle(replay, "preliminary")
    assert all(s["status"] == "published" for s in preliminary["statuses"].values())
    # Only the notices that the earlier problems are over: no quarantine, no warning.
    assert {a["kind"] for a in preliminary["alerts"]} == {"resolved"}
    parties = query(replay, f"""
        SELECT sum(r.pct_published) FROM results_by_snapshot r JOIN divisions_by_snapshot d
          USING (snapshot_id, contest_id, division_id)
        WHERE r.snapshot_id = '{preliminary["snapshot_id"]}' AND r.contest_id = 'list'
          AND d.parent_id IS NULL AND NOT r.is_against_all""")
    assert parties[0][0] == pytest.approx(86.96, abs=0.05)


def test_the_annulment_raises_a_revision_warning(replay: Replay) -> None:
    annulment = cycle(replay, "annulment")
    assert annulment["statuses"]["list"]["status"] == "published"
    warnings = [a for a in annulment["alerts"] if a["kind"] == "warning"]
    assert warnings and any("W2" in a["checks"] for a in warnings)
    rows = query(replay, f"""
        SELECT count(*) FROM dq_results WHERE snapshot_id = '{annulment["snapshot_id"]}'
          AND check_id = 'W2' AND NOT success AND division_id IS NOT NULL""")
    assert rows[0][0] > 0


def test_the_final_snapshot_publishes_with_the_cec_seats(replay: Replay) -> None:
    final = cycle(replay, "final")
    assert all(s["status"] == "published" for s in final["statuses"].values())
    seats = dict(query(replay, "SELECT choice_position, seats FROM seat_allocation "
                               "WHERE contest_id = 'list' AND seats > 0"))
    assert seats == FINAL_SEATS
    assert query(replay, "SELECT DISTINCT snapshot_id FROM seat_allocation "
                         "WHERE contest_id = 'list'") == [(final["snapshot_id"],)]


def test_an_unchanged_portal_is_a_skipped_run_with_no_new_rows(replay: Replay) -> None:
    repeat = replay.cycles[-1]
    assert repeat["portal"] == "unchanged" and repeat["snapshot_id"] is None
    assert repeat["alerts"] == []
    loaded = query(replay, "SELECT count(*) FROM snapshots")[0][0]
    changed_runs = [c for c in replay.cycles if c["portal"] == "changed"]
    assert loaded == len({c["snapshot_id"] for c in changed_runs})
