"""Shared fixtures: every test writes under its own data directory, never the repo's `data/`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# `make test` runs the suite in parallel (pytest-xdist, one process per worker, whole files
# per worker: `--dist loadfile` keeps module fixtures such as the election-night replay to
# one computation). Everything a test writes is per worker: tmp_path (xdist gives each
# worker its own base), PostgreSQL databases and schemas (random names), ports (from the
# OS), and the Airflow home below. Without xdist the worker is "main".
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")

# Airflow reads its configuration when first imported: give each test process its own
# AIRFLOW_HOME (SQLite metadata DB) before any test imports airflow.
os.environ["AIRFLOW_HOME"] = str(REPO / ".pytest_airflow" / WORKER)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")

# Settings a developer may have exported; tests must not inherit them.
_ISOLATED_ENV = (
    "CEC_PORTAL_URL", "CEC_WAREHOUSE_URL", "CEC_RAW_DIR", "CEC_REPORT_DIR", "CEC_STAGING_DIR",
    "CEC_ALERTS_FILE", "CEC_ALERT_STATE_FILE", "CEC_ALERT_WEBHOOK_URL", "CEC_ALERT_SLACK_CONN_ID",
    "CEC_ALERT_SMTP_CONN_ID", "CEC_ALERT_EMAIL_TO", "CEC_CONCURRENCY", "CEC_CRAWL_PROCESSES",
    "CEC_RETRIES", "CEC_TIMEOUT", "CEC_CRAWL_BATCHES", "CEC_REQUEST_DEADLINE", "CEC_CRAWL_DEADLINE",
    "CEC_CYCLE_DEADLINE", "CEC_MAX_PAGE_BYTES", "CEC_MAX_PAGES", "CEC_MAX_QUERY_VARIANTS",
    "CEC_GATE_PROCESSES", "CEC_GATE_PARALLEL_MAX_ROWS",
)


# The files that take longest (module fixtures replaying a night, a Celery cluster, many
# `etl run` processes), longest first. xdist's `--dist loadfile` hands files out in
# collection order, so starting these first keeps a long file from being the last one a
# worker picks up while the others idle (longest-processing-time-first scheduling). Order:
# worker-seconds per file of a whole `-n 2` run (README "Running the tests"); the cluster
# leads because it mostly waits. Files not listed keep their order, after these.
SLOW_FILES_FIRST = (
    "test_cluster.py",
    "test_warehouse_versions.py",
    "test_faults.py",
    "test_hostile.py",
    "test_election_night.py",
    "test_cycle.py",
    "test_quality.py",
    "test_report.py",
    "test_warehouse.py",
    "test_quality_replica.py",
    "test_fastparse.py",
    "test_scrape.py",
    "test_warehouse_kg2021.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist reorders files by their number of tests unless told not to (its
    # `--loadscope-reorder`, on by default): that puts the few-but-long tests last.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Known-slow files first; the order of tests inside a file is kept (a stable sort)."""
    rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point CEC_DATA_DIR at a fresh directory for each test."""
    for name in _ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    monkeypatch.setenv("CEC_DATA_DIR", str(data))
    yield data


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    """A scratch database on the machine's PostgreSQL for the session (an error if it is down)."""
    from snapshot_factory import postgres_database

    with postgres_database() as url:
        yield url


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each warehouse backend in turn: a DuckDB file, then a fresh PostgreSQL schema."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path}/warehouse.duckdb"
    from snapshot_factory import postgres_schema_url

    return postgres_schema_url(request.getfixturevalue("postgres_database_url"))
