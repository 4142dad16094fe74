"""Election-night DAGs: one per election rule file in `elections/` (e.g. `cec_results__jk2021`).

Wiring only. Each task calls one stage of `etl.cycle`; the stages pass paths and small
dicts through XCom, never frames. Nothing here touches the network, a database or an
Airflow Variable at parse time, and nothing heavy is imported at module level.

detect_change → plan_crawl → crawl (mapped, one per batch of contests) → assemble →
validate → publish → announce (Asset event) ; alert runs whatever happened upstream, then
report refreshes the election-night site (every run is a row of its night index). When
the portal has not changed (or is unavailable), plan_crawl short-circuits: crawl to
publish are skipped at once.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from etl.elections import ElectionRules, ElectionRulesError, read_elections
from etl.identifiers import IDENTIFIER_PATTERN
from etl.triggers import election_schedule

ID_PATTERN = f"^{IDENTIFIER_PATTERN.pattern}$"

log = logging.getLogger(__name__)

# Loads into DuckDB must not overlap (one writing process per file): the publish task
# runs in this pool, which `make run` and the README create with a single slot.
WAREHOUSE_POOL = "cec_warehouse"

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "cec-results",
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=3),
}


def results_asset(election_id: str) -> Asset:
    """The Asset a data team's DAG can schedule on: fresh published results."""
    return Asset(f"cec://{election_id}/results")


def build_election_dag(rules: ElectionRules) -> Any:
    """The scheduled DAG of one election."""
    election_id = rules.election_id
    asset = results_asset(election_id)
    schedule = rules.schedule

    @dag(
        dag_id=f"cec_results__{election_id}",
        description=f"Scrape, check and publish CEC results: {rules.name}",
        # The watched portal asset (event-driven) or the cron, as the rule file says.
        schedule=election_schedule(rules),
        start_date=schedule.start if schedule else None,
        end_date=schedule.end if schedule else None,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        dagrun_timeout=timedelta(minutes=30),
        tags=["cec", election_id],
        doc_md=__doc__,
    )
    def election_night() -> None:
        @task
        def detect_change() -> dict[str, Any]:
            from etl import config
            from etl.cycle import detect_change as detect

            return detect(config.portal_url(), election_id, lang=rules.lang).to_dict()

        # A short circuit: on an unchanged or unavailable portal it returns no batches and
        # skips the crawl-to-publish chain at once (every link is its direct downstream),
        # where a skip would reach them one level per scheduler pass (`dag.test()` sleeps
        # a second per level: 4 s of every unchanged run of `make run`). `alert` and
        # `report` keep their all_done rule.
        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def plan_crawl(detection: dict[str, Any]) -> list[list[str]]:
            from etl import config
            from etl.cycle import CHANGED, plan_batches

            if detection["status"] != CHANGED:
                log.info("portal %s: nothing to do", detection["status"])
                return []
            return plan_batches(detection["contests"], config.crawl_batches())

        @task(max_active_tis_per_dagrun=4)
        def crawl(contests: list[str], **context: Any) -> str:
            from etl import config
            from etl.cycle import crawl_batch, run_dir

            index = context["ti"].map_index
            out = run_dir(election_id, context["run_id"]) / f"batch-{index}.arrow"
            return str(crawl_batch(config.portal_url(), election_id, contests, out, lang=rules.lang))

        @task
        def assemble(detection: dict[str, Any], batches: list[str]) -> str:
            from pathlib import Path

            from etl import config
            from etl.cycle import assemble_snapshot

            return str(assemble_snapshot(config.portal_url(), election_id,
                                         [Path(b) for b in batches], detection["checked_at"],
                                         lang=rules.lang,
                                         election_page=detection.get("election_page")))

        @task
        def validate(snapshot_dir: str) -> str:
            from pathlib import Path

            from etl import config
            from etl.cycle import validate_stage

            return str(validate_stage(Path(snapshot_dir), config.warehouse_url()))

        @task(pool=WAREHOUSE_POOL)
        def publish(snapshot_dir: str, detection: dict[str, Any]) -> dict[str, Any]:
            from pathlib import Path

            from etl import config
            from etl.cycle import publish_stage

            return publish_stage(Path(snapshot_dir), config.warehouse_url(),
                                 detection["fingerprint"])

        @task(outlets=[asset])
        def announce(published: dict[str, Any], **context: Any) -> list[str]:
            contests = [c for c, s in published["statuses"].items() if s["status"] == "published"]
            if not contests:
                raise AirflowSkipException("nothing published: no asset event")
            context["outlet_events"][asset].extra = {
                "snapshot_id": published["snapshot_id"],
                "portal_updated_at": published["portal_updated_at"],
                "contests": contests,
            }
            return contests

        @task(trigger_rule="all_done")
        def alert(detection: dict[str, Any], **context: Any) -> list[dict[str, Any]]:
            from etl.cycle import alert_stage, fold_archive

            published = context["ti"].xcom_pull(task_ids="publish")
            sent = alert_stage(detection, published)
            fold_archive()  # the next run's change detection reads a short index tail
            return sent

        @task(trigger_rule="all_done")
        def report(**context: Any) -> str:
            from etl.report import build_report

            published = context["ti"].xcom_pull(task_ids="publish")
            snapshot_id = published["snapshot_id"] if published else None
            return str(build_report(election_id, snapshot_id=snapshot_id).index)

        detection = detect_change()
        batches = plan_crawl(detection)
        staged = crawl.expand(contests=batches)
        snapshot_dir = assemble(detection, staged)
        checked = validate(snapshot_dir)
        published = publish(checked, detection)
        batches >> [snapshot_dir, checked, published]
        announce(published)
        published >> alert(detection) >> report()

    return election_night()


def build_reprocess_dag() -> Any:
    """Manually triggered: rebuild snapshots from the raw archive after a parser fix."""

    @dag(
        dag_id="cec_reprocess",
        description="Rebuild snapshots from the raw archive (no portal access), then re-check "
        "and re-publish them",
        schedule=None,
        start_date=None,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["cec", "reprocess"],
        params={
            # Checked again in etl.cycle.reprocess_snapshots (ids reach `rmtree`).
            "election_id": Param("jk2021", type="string", pattern=ID_PATTERN),
            "snapshot_ids": Param([], type="array", items={"type": "string", "pattern": ID_PATTERN},
                                  description="snapshot ids to rebuild; empty = all staged"),
        },
    )
    def reprocess() -> None:
        @task(pool=WAREHOUSE_POOL)
        def rebuild(**context: Any) -> list[dict[str, Any]]:
            from etl import config
            from etl.cycle import reprocess_snapshots

            params = context["params"]
            return reprocess_snapshots(params["election_id"], params["snapshot_ids"],
                                       config.warehouse_url())

        rebuild()

    return reprocess()


class BrokenElectionFile(DAG):
    """Stands for a rule file that cannot be read: refused when the DAG bag validates it.

    Airflow records an import error for this file (naming the rule file and why) while the
    other elections' DAGs and `cec_reprocess`, built from the same file, still load.
    """

    def __init__(self, error: ElectionRulesError, index: int) -> None:
        super().__init__(dag_id=f"cec_results__broken_rule_file_{index}", schedule=None)
        self.rules_error = error

    def validate(self) -> None:
        """Always refused: the rule file is broken."""
        raise ElectionRulesError(f"election rule file not loaded: {self.rules_error}")


_valid, _broken = read_elections()
for _rules in _valid:
    globals()[f"cec_results__{_rules.election_id}"] = build_election_dag(_rules)
for _index, _error in enumerate(_broken):
    globals()[f"cec_results__broken_rule_file_{_index}"] = BrokenElectionFile(_error, _index)
cec_reprocess = build_reprocess_dag()
