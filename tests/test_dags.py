"""DAG integrity: the DAG files import cleanly, are configured for election night, wire the
expected task graph and import nothing heavy at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
HEAVY_MODULES = ("pandas", "great_expectations", "bs4", "lxml", "duckdb", "psycopg", "pyarrow",
                 "requests", "numpy", "altair", "vl_convert", "scipy")


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"cec_results__jk2021", "cec_reprocess",
                                   "cec_example_consumer__jk2021"}


def test_every_dag_sets_retries_catchup_and_one_active_run(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag in dagbag.dags.values():
        assert dag.catchup is False, dag.dag_id
        assert dag.max_active_runs == 1, dag.dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id} has no retries"


def test_election_dag_schedule_comes_from_the_rule_file(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["cec_results__jk2021"]
    # mode = "watch": scheduled on the portal asset, which a PortalChangeTrigger watches.
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    [portal] = dag.schedule
    assert portal.uri == "cec://jk2021/portal"
    [watcher] = portal.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "etl.triggers.PortalChangeTrigger"
    assert (kwargs["election_id"], kwargs["lang"], kwargs["poll_seconds"]) == ("jk2021", "ru", 3.0)
    # No URL baked in at parse time: the triggerer's CEC_PORTAL_URL decides.
    assert kwargs["portal_url"] is None
    assert kwargs["start"] == "2021-11-28T20:00:00+06:00"
    assert dag.start_date.isoformat().startswith("2021-11-28T14:00:00")  # 20:00 at +06:00
    assert dag.end_date.isoformat().startswith("2021-12-15T18:00:00")
    publish = dag.get_task("publish")
    assert publish.pool == "cec_warehouse"
    announce = dag.get_task("announce")
    assert [o.uri for o in announce.outlets] == ["cec://jk2021/results"]


def test_cron_stays_available_as_the_fallback(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import runpy

    from etl.elections import load_election

    text = (REPO / "elections" / "jk2021.toml").read_text(encoding="utf-8")
    assert 'mode = "watch"' in text
    (tmp_path / "jk2021.toml").write_text(text.replace('mode = "watch"', 'mode = "cron"'),
                                          encoding="utf-8")
    monkeypatch.setenv("CEC_ELECTIONS_DIR", str(tmp_path))
    dag = runpy.run_path(str(DAGS / "cec_results.py"))["cec_results__jk2021"]
    assert dag.schedule == "*/5 * * * *"
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert load_election("jk2021").schedule.mode == "cron"


def test_election_dag_task_graph(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["cec_results__jk2021"]
    edges = {(up.task_id, down) for up in dag.tasks for down in up.downstream_task_ids}
    assert edges == {
        ("detect_change", "plan_crawl"),
        ("detect_change", "assemble"),
        ("detect_change", "publish"),
        ("detect_change", "alert"),
        ("plan_crawl", "crawl"),
        # the short circuit skips the whole crawl-to-publish chain at once
        ("plan_crawl", "assemble"),
        ("plan_crawl", "validate"),
        ("plan_crawl", "publish"),
        ("crawl", "assemble"),
        ("assemble", "validate"),
        ("validate", "publish"),
        ("publish", "announce"),
        ("publish", "alert"),
        ("alert", "report"),
    }
    # An unchanged portal skips crawl to publish in one step; alert and report still run.
    assert dag.get_task("plan_crawl").ignore_downstream_trigger_rules is False
    assert dag.get_task("alert").trigger_rule == "all_done"
    assert dag.get_task("report").trigger_rule == "all_done"
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(dag.get_task("crawl"), MappedOperator)


def test_consumer_dag_runs_on_the_results_asset(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.dags["cec_example_consumer__jk2021"]
    assert [asset.uri for asset in dag.schedule] == ["cec://jk2021/results"]


def test_dag_files_import_nothing_heavy_at_parse_time() -> None:
    probe = (
        "import runpy, sys, json\n"
        f"for path in {sorted(str(p) for p in DAGS.glob('*.py'))!r}:\n"
        "    runpy.run_path(path)\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_replay_starts_the_execution_api_before_its_first_run(tmp_path: Path) -> None:
    """`make run` builds the in-process execution API (and Cadwyn's versioned routes, built
    on its first request) while it prepares Airflow: the first DAG run does not pay for it."""
    code = (
        "from airflow.sdk.execution_time.supervisor import in_process_api_server\n"
        "from etl.demo import warm_execution_api\n"
        "assert not in_process_api_server().app._cadwyn_initialized\n"
        "warm_execution_api()\n"
        "print(in_process_api_server().app._cadwyn_initialized)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "AIRFLOW_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"  # after Airflow's own log lines
