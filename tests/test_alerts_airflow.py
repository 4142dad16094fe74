"""The alert step inside a real Airflow task: the provider notifiers find their
connections through the task SDK and deliver to loopback receivers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from receivers import HttpReceiver, SmtpReceiver, alert_channel_env

pytestmark = pytest.mark.airflow

REPO_ROOT = Path(__file__).resolve().parent.parent

DAG_FILE = '''
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2021, 11, 28, tz="UTC"), catchup=False)
def alert_probe():
    @task
    def alert() -> None:
        import pandas as pd

        from etl.alerts import alert_on_snapshot
        from etl.schema import DQ_RESULTS, typed_frame

        meta = {"snapshot_id": "snap-140", "election_id": "jk2021",
                "portal_updated_at": "2021-11-28T22:15:00+06:00", "failures": []}
        dq = typed_frame([{
            "snapshot_id": "snap-140", "check_id": "C1", "severity": "critical",
            "success": False, "contest_id": "list", "division_id": "0",
            "choice_position": None, "observed": "143.27", "expected": "<= 100.00",
            "message": "published percentages sum to 143.27%",
        }], DQ_RESULTS)
        result = alert_on_snapshot(meta, dq, {"list": ("quarantined", None)}, "report.html")
        assert not result.failures, result.failures

    alert()


alert_probe()
'''

RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import alert_probe
    run = alert_probe.alert_probe().test()
    sys.exit(0 if str(run.state) == "success" else 1)
""")


def test_alert_task_delivers_to_every_channel_inside_airflow(tmp_path: Path) -> None:
    home, dags = tmp_path / "airflow_home", tmp_path / "airflow_home" / "dags"
    dags.mkdir(parents=True)
    (dags / "alert_probe.py").write_text(DAG_FILE)
    with HttpReceiver() as webhook, HttpReceiver() as slack, SmtpReceiver() as smtp:
        env = os.environ | {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            "CEC_DATA_DIR": str(tmp_path / "data"),
        } | alert_channel_env(webhook, slack, smtp)
        airflow = Path(sys.executable).with_name("airflow")
        subprocess.run([str(airflow), "db", "migrate"], env=env, check=True,
                       capture_output=True, timeout=300)
        run = subprocess.run([sys.executable, "-c", RUNNER, str(dags)], env=env, check=False,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

        assert [p.json()["contest_id"] for p in webhook.posts()] == ["list"]
        (slack_post,) = slack.posts()
        assert slack_post.path == "/T0/B0/token"
        assert "QUARANTINED list: C1" in slack_post.json()["text"]
        (mail,) = smtp.messages
        assert mail["Subject"] == (
            "[CEC jk2021] QUARANTINED list: C1 published percentages sum to 143.27%")
    (line,) = (tmp_path / "data" / "alerts.jsonl").read_text().splitlines()
    assert json.loads(line)["kind"] == "quarantined"
