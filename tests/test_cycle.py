"""`python -m etl run` (one full cycle) and the reprocess DAG, against the replica and each
warehouse backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from etl_process import etl_env, run_etl

from etl.replica import ReplicaServer
from etl.replica.process import free_port
from etl.warehouse.backends import connect

REPO = Path(__file__).resolve().parent.parent
CONTESTS = ["list", "okrug-3"]  # the party list and a constituency won by against all


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer(scenario="kg2021", at="counting-4", port=0) as server:
        yield server


def etl_run(portal: str, warehouse: str, data: Path, *contests: str) -> subprocess.CompletedProcess[str]:
    args = [arg for contest in contests or CONTESTS for arg in ("--contest", contest)]
    return run_etl("run", "--portal", portal, "--election", "jk2021", "--warehouse", warehouse,
                   *args, env=etl_env(data), timeout=300)


def rows(warehouse: str, sql: str) -> list[tuple[object, ...]]:
    with connect(warehouse) as db:
        return db.query(sql)


def test_run_publishes_then_skips_an_unchanged_portal(replica: ReplicaServer, warehouse_url: str,
                                                      tmp_path: Path) -> None:
    replica.goto("counting-4")
    first = etl_run(replica.base_url, warehouse_url, tmp_path / "data")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "published: 2 contests: list, okrug-3" in first.stdout
    counts = rows(warehouse_url, "SELECT count(*) FROM results")
    assert rows(warehouse_url, "SELECT status FROM snapshot_contests ORDER BY contest_id") == [
        ("published",), ("published",)]

    again = etl_run(replica.base_url, warehouse_url, tmp_path / "data")
    assert again.returncode == 0
    assert "unchanged" in again.stdout
    assert rows(warehouse_url, "SELECT count(*) FROM results") == counts
    assert rows(warehouse_url, "SELECT count(*) FROM snapshots") == [(1,)]
    # Against all won okrug-3: nobody gets its seat.
    assert rows(warehouse_url, "SELECT sum(seats) FROM seat_allocation WHERE contest_id = 'okrug-3'"
                ) == [(0,)]


def test_run_quarantines_the_formula_error_and_exits_3(replica: ReplicaServer, warehouse_url: str,
                                                       tmp_path: Path) -> None:
    replica.goto("counting-4")
    assert etl_run(replica.base_url, warehouse_url, tmp_path / "data").returncode == 0
    replica.goto("formula-error")
    run = etl_run(replica.base_url, warehouse_url, tmp_path / "data")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "quarantined: 1 contests: list" in run.stdout and "C1" in run.stdout
    # The previous published snapshot (counting-4) stays current for data teams.
    published = rows(warehouse_url, "SELECT snapshot_id FROM snapshot_contests "
                                    "WHERE contest_id = 'list' AND status = 'published'")
    assert len(published) == 1
    assert rows(warehouse_url, "SELECT DISTINCT snapshot_id FROM latest_results "
                               "WHERE contest_id = 'list'") == published
    [alert] = [json.loads(line) for line in (tmp_path / "data" / "alerts.jsonl").open()]
    assert alert["kind"] == "quarantined" and alert["contest_id"] == "list"


def test_run_on_an_unreachable_portal_exits_1_and_alerts(tmp_path: Path) -> None:
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    run = etl_run(f"http://127.0.0.1:{free_port()}", warehouse, tmp_path / "data")
    assert run.returncode == 1
    assert "portal unavailable" in run.stderr
    [alert] = [json.loads(line) for line in (tmp_path / "data" / "alerts.jsonl").open()]
    assert alert["kind"] == "pipeline_failed"
    assert not (tmp_path / "warehouse.duckdb").exists()  # nothing published


@pytest.mark.airflow
def test_reprocess_dag_rebuilds_from_the_archive_without_the_portal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    with ReplicaServer(scenario="kg2021", at="preliminary", port=0) as server:
        assert etl_run(server.base_url, warehouse, data, "okrug-1").returncode == 0
    before = rows(warehouse, "SELECT snapshot_id, count(*) FROM results GROUP BY 1")
    [snapshot_dir] = list((data / "staging" / "jk2021" / "snapshots").iterdir())
    (snapshot_dir / "results.parquet").unlink()  # what a parser fix would rebuild

    env = os.environ | {
        "AIRFLOW_HOME": str(tmp_path / "airflow_home"), "CEC_DATA_DIR": str(data),
        "CEC_WAREHOUSE_URL": warehouse,
        # The portal is gone: a rebuild that tried to fetch anything would fail.
        "CEC_PORTAL_URL": f"http://127.0.0.1:{free_port()}",
    }
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    run = subprocess.run(
        [*airflow, "dags", "test", "cec_reprocess", "--conf",
         json.dumps({"election_id": "jk2021", "snapshot_ids": [snapshot_dir.name]})],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "state=success" in run.stdout + run.stderr
    assert (snapshot_dir / "results.parquet").exists()
    assert rows(warehouse, "SELECT snapshot_id, count(*) FROM results GROUP BY 1") == before


def test_a_crawl_past_its_deadline_fails_the_run_and_publishes_nothing(
        replica: ReplicaServer, tmp_path: Path) -> None:
    # The crawl runs in a child process (`etl.forked`): its DeadlineExceeded must reach the
    # command as one, with the coverage it reached, and nothing be published.
    from etl.replica.server import Faults

    replica.goto("counting-4")
    replica.set_faults(Faults(trickle=0.05, path_regex=r"/okrug-3/\d+/$"))
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    try:
        run = run_etl("run", "--portal", replica.base_url, "--election", "jk2021",
                      "--warehouse", warehouse, "--contest", "okrug-3",
                      env=etl_env(tmp_path / "data", CEC_CRAWL_DEADLINE="3",
                                  CEC_REQUEST_DEADLINE="60"), timeout=120)
    finally:
        replica.set_faults(Faults())
    assert run.returncode == 1, run.stdout + run.stderr
    assert "coverage incomplete" in run.stderr and "hit its deadline" in run.stderr
    assert not (tmp_path / "warehouse.duckdb").exists() or rows(
        warehouse, "SELECT count(*) FROM snapshots") == [(0,)]


def test_a_warm_up_that_fails_is_logged_and_the_cycle_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    # While the crawl's child runs, etl run's parent imports what the next stages need; a
    # failure there must not abandon the crawl's result: the stage that needs the import
    # fails in its turn, with its own error.
    from etl.__main__ import WHILE_CRAWLING
    from etl.cycle import warm

    def warm_quality_gate() -> None:
        raise ImportError("no module named great_expectations")

    warm(warm_quality_gate, WHILE_CRAWLING)
    assert "warm_quality_gate failed while the crawl ran" in caplog.text
    assert "no module named great_expectations" in caplog.text


def test_the_gate_uses_a_previous_snapshot_read_ahead_only_if_read_for_this_one(
        replica: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `etl run` reads the previous published snapshot while its crawl runs and hands it to
    # the gate; read for another warehouse, election or set of contests, it is read again.
    from etl import cycle

    replica.goto("counting-4")
    warehouse = f"duckdb:///{tmp_path}/warehouse.duckdb"
    data = tmp_path / "data"
    assert etl_run(replica.base_url, warehouse, data).returncode == 0
    [snapshot_dir] = (data / "staging" / "jk2021" / "snapshots").iterdir()
    monkeypatch.setenv("CEC_DATA_DIR", str(data))
    unusable = (None, None)  # frames the gate would fail on if it used them
    for other in (cycle.PreviousPublished("duckdb:///elsewhere.duckdb", "jk2021",
                                          tuple(CONTESTS), unusable),
                  cycle.PreviousPublished(warehouse, "jk2021", ("list",), unusable)):
        assert cycle.validate_stage(snapshot_dir, warehouse, other) == snapshot_dir
    read_for_it = cycle.PreviousPublished(warehouse, "jk2021", tuple(CONTESTS), unusable)
    with pytest.raises(TypeError):
        cycle.validate_stage(snapshot_dir, warehouse, read_for_it)
