"""Settings from the environment, read when asked (never at import time).

Every variable is documented, with its default, in `.env.example` and the README.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
USER_AGENT = "cec-results-etl/0.1 (+election observers' results pipeline)"


def env(name: str, default: str) -> str:
    """The variable's value, or `default` when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or default


def data_dir() -> Path:
    """Root of everything the pipeline writes (`CEC_DATA_DIR`, default `data/`)."""
    return Path(env("CEC_DATA_DIR", "data"))


def raw_dir() -> Path:
    """The content-addressed raw archive (`CEC_RAW_DIR`, default `<data>/raw`)."""
    return Path(env("CEC_RAW_DIR", str(data_dir() / "raw")))


def report_dir() -> Path:
    """Where the quality reports go (`CEC_REPORT_DIR`, default `<data>/reports`)."""
    return Path(env("CEC_REPORT_DIR", str(data_dir() / "reports")))


def staging_dir() -> Path:
    """Per-snapshot staging directories (`CEC_STAGING_DIR`, default `<data>/staging`)."""
    return Path(env("CEC_STAGING_DIR", str(data_dir() / "staging")))


def portal_url() -> str:
    """Base URL of the portal (`CEC_PORTAL_URL`, default the local replica)."""
    return env("CEC_PORTAL_URL", "http://127.0.0.1:8765").rstrip("/")


def portal_lang() -> str:
    """Language section the pipeline reads (`CEC_PORTAL_LANG`, default `ru`)."""
    return env("CEC_PORTAL_LANG", "ru")


def warehouse_url() -> str:
    """Warehouse URL (`CEC_WAREHOUSE_URL`): `duckdb:///path` or `postgresql://…`."""
    return env("CEC_WAREHOUSE_URL", f"duckdb:///{data_dir() / 'warehouse.duckdb'}")


def alerts_file() -> Path:
    """The JSON-lines alert log (`CEC_ALERTS_FILE`, default `<data>/alerts.jsonl`)."""
    return Path(env("CEC_ALERTS_FILE", str(data_dir() / "alerts.jsonl")))


def elections_dir() -> Path:
    """Directory of election rule files (`CEC_ELECTIONS_DIR`, default `elections/`)."""
    return Path(env("CEC_ELECTIONS_DIR", str(REPO_ROOT / "elections")))


def concurrency(shares: int = 1) -> int:
    """Requests in flight at once for one of `shares` crawl tasks that run at once.

    `CEC_CONCURRENCY` (default 8) is the run's total, over all its crawl tasks (the DAG
    maps the crawl over `CEC_CRAWL_BATCHES` tasks); each gets its share, at least 1.
    """
    return max(1, int(env("CEC_CONCURRENCY", "8")) // max(1, shares))


def crawl_processes(shares: int = 1) -> int:
    """Worker processes of one of `shares` crawl tasks that run at once.

    `CEC_CRAWL_PROCESSES` (default: the machine's CPU count) is the run's total, over all
    its crawl tasks: each gets its share, at least 1, so that processes × tasks never
    exceeds the cores (one worker process keeps one core busy: its threads only wait on
    the network, and it parses one page at a time).
    """
    total = int(env("CEC_CRAWL_PROCESSES", str(os.cpu_count() or 1)))
    return max(1, total // max(1, shares))


# Below this many result lines the quality gate's second process costs more (its fork,
# the findings' way back) than it saves; above `CEC_GATE_PARALLEL_MAX_ROWS` the two
# processes' derived frames would sit side by side under the gate's memory peak.
GATE_PARALLEL_MIN_ROWS = 10_000


def gate_processes(result_rows: int) -> int:
    """Processes the quality gate spreads its suites over for a snapshot of `result_rows`.

    `CEC_GATE_PROCESSES` (1 or 2; default 2 on a machine with two or more cores) when the
    snapshot has between `GATE_PARALLEL_MIN_ROWS` and `CEC_GATE_PARALLEL_MAX_ROWS` (default 500,000)
    result lines, else 1. Once the crawl is over the cycle runs on one core; the gate
    derives and validates a dozen independent frames, half of them in a forked child.
    """
    wanted = int(env("CEC_GATE_PROCESSES", str(min(2, os.cpu_count() or 1))))
    largest = int(env("CEC_GATE_PARALLEL_MAX_ROWS", "500000"))
    if not GATE_PARALLEL_MIN_ROWS <= result_rows <= largest:
        return 1
    return min(2, max(1, wanted))  # the row cap is for two processes' frames at once


def request_timeout() -> float:
    """Seconds to wait for a response before retrying (`CEC_TIMEOUT`, default 10)."""
    return float(env("CEC_TIMEOUT", "10"))


def max_retries() -> int:
    """Retries per request on 429/5xx/timeouts (`CEC_RETRIES`, default 4)."""
    return int(env("CEC_RETRIES", "4"))


def crawl_batches() -> int:
    """Mapped crawl tasks per DAG run (`CEC_CRAWL_BATCHES`, default 4)."""
    return int(env("CEC_CRAWL_BATCHES", "4"))


def request_deadline() -> float:
    """Total seconds one request may take, however slowly the body trickles in
    (`CEC_REQUEST_DEADLINE`, default 30); a read timeout alone never ends a slow body."""
    return float(env("CEC_REQUEST_DEADLINE", "30"))


def crawl_deadline() -> float:
    """Seconds a crawl may take before it stops (`CEC_CRAWL_DEADLINE`, default 240)."""
    return float(env("CEC_CRAWL_DEADLINE", "240"))


def cycle_deadline() -> float:
    """Seconds one whole cycle may take (`CEC_CYCLE_DEADLINE`, default 285: under the
    5-minute schedule, so a cycle never overlaps the next)."""
    return float(env("CEC_CYCLE_DEADLINE", "285"))


def max_page_bytes() -> int:
    """Largest response body read; a larger one fails its page (`CEC_MAX_PAGE_BYTES`,
    default 5 MiB: the portal's largest page is ~60 KB)."""
    return int(env("CEC_MAX_PAGE_BYTES", str(5 * 1024 * 1024)))


def max_pages() -> int:
    """Pages one crawl fetches at most (`CEC_MAX_PAGES`, default 20000: a snapshot of the
    2021 portal is ~5,000 pages per language)."""
    return int(env("CEC_MAX_PAGES", "20000"))


def max_query_variants() -> int:
    """Distinct query strings followed per path (`CEC_MAX_QUERY_VARIANTS`, default 1)."""
    return int(env("CEC_MAX_QUERY_VARIANTS", "1"))
