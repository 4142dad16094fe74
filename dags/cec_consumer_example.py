"""Example for data teams: a DAG that runs whenever fresh results are published.

It is scheduled on the Asset `cec://jk2021/results`, which the election DAG's `announce`
task updates after each publish, and logs the current seat allocation from the warehouse.
Copy it as a starting point for your own downstream jobs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, dag, task

ELECTION_ID = "jk2021"


@dag(
    dag_id=f"cec_example_consumer__{ELECTION_ID}",
    schedule=[Asset(f"cec://{ELECTION_ID}/results")],
    start_date=None,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["cec", "example"],
    doc_md=__doc__,
)
def cec_example_consumer() -> None:
    @task
    def log_seat_allocation(**context: Any) -> list[dict[str, Any]]:
        import logging

        from etl import config
        from etl.cycle import latest_seats

        for event in context["triggering_asset_events"].get(
                Asset(f"cec://{ELECTION_ID}/results"), []):
            logging.getLogger(__name__).info("fresh results: %s", event.extra)
        seats = latest_seats(config.warehouse_url(), ELECTION_ID, "list")
        for row in seats:
            logging.getLogger(__name__).info("%s: %s seats", row["choice_name"], row["seats"])
        return seats

    log_seat_allocation()


cec_example_consumer()
