"""Run one hostile case: a hostile portal on loopback, one `python -m etl run`, the verdict.

The cycle runs in this process through `etl.__main__.main` (the exact code path of
`python -m etl run`, without an interpreter start per case) in a watchdog thread: a case
that has not finished within `CASE_TIMEOUT_S` is a hang, and fails. A case that needs a
process of its own (a file-size limit) runs `python -m etl run` as a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.etl_process import run_etl
from tests.hostile.server import HostileServer, Mutation, unchanged

REPO = Path(__file__).resolve().parents[2]
ELECTION = "jk2021"
CONTEST = "okrug-1"  # 29 pages: quick, yet a root and its precincts
CASE_TIMEOUT_S = 150.0
# Settings of every case: few retries and short deadlines, so that faults end quickly.
BASE_ENV = {
    "CEC_RETRIES": "1",
    "CEC_TIMEOUT": "2",
    "CEC_REQUEST_DEADLINE": "4",
    "CEC_CRAWL_DEADLINE": "60",
    "CEC_CYCLE_DEADLINE": "120",
    "CEC_CRAWL_PROCESSES": "1",
    "CEC_CONCURRENCY": "4",
}


@dataclass
class Outcome:
    """What one run did, with ways to look at the warehouse and the archive it left."""

    exit_code: int | None  # None: it did not finish in time
    stdout: str
    stderr: str
    seconds: float
    data_dir: Path
    hits: list[str]
    base_url: str

    @property
    def warehouse(self) -> Path:
        """The run's DuckDB file."""
        return self.data_dir / "warehouse.duckdb"

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of a query on the run's warehouse (empty when it was never created)."""
        if not self.warehouse.exists():
            return []
        import duckdb

        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            tables = {r[0] for r in con.execute(
                "select table_name from information_schema.tables").fetchall()}
            if "snapshot_contests" not in tables:
                return []
            return con.execute(sql, list(params)).fetchall()

    def statuses(self) -> dict[str, str]:
        """Each contest's status in the snapshot this run loaded."""
        return {c: s for c, s in self.query("select contest_id, status from snapshot_contests")}

    @property
    def published(self) -> bool:
        """Whether the contest was published by this run."""
        return self.statuses().get(CONTEST) == "published"

    def snapshot_meta(self) -> dict[str, Any]:
        """The staged snapshot.json of this run ({} when none was assembled)."""
        found = sorted((self.data_dir / "staging" / ELECTION / "snapshots").glob("*/snapshot.json"),
                       key=lambda p: p.stat().st_mtime)
        return json.loads(found[-1].read_text(encoding="utf-8")) if found else {}

    def index_entries(self) -> list[dict[str, Any]]:
        """The raw archive's index lines (each must be whole JSON)."""
        path = self.data_dir / "raw" / "index.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def failed_checks(self) -> set[str]:
        """Check ids that failed for the contest in this run's dq_results."""
        return {r[0] for r in self.query(
            "select distinct check_id from dq_results where not success and contest_id = ?",
            CONTEST)}

    def url(self, path: str) -> str:
        """The hostile portal's URL of a path."""
        return self.base_url + path


Check = tuple[str, Callable[[Outcome], bool]]


@dataclass(frozen=True)
class Case:
    """One hostile case: what the portal does, and what the pipeline must do about it."""

    name: str
    category: str
    what: str
    expect_exit: int
    expect_published: bool
    mutate: Mutation = unchanged
    checks: Sequence[Check] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    pending: str | None = None  # holds only once another change lands (not in pytest)
    run: Callable[[Case, Path], tuple[Outcome, list[str]]] | None = None


@dataclass(frozen=True)
class Verdict:
    """A case's result: held when exit code, publication and every check are as expected."""

    case: Case
    outcome: Outcome
    problems: tuple[str, ...]

    @property
    def held(self) -> bool:
        """Whether the pipeline did what the case expects."""
        return not self.problems


@contextlib.contextmanager
def patched_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def case_env(case: Case, data_dir: Path) -> dict[str, str]:
    """The environment a case's run gets."""
    return {**BASE_ENV, "CEC_DATA_DIR": str(data_dir), **case.env}


def run_args(base_url: str) -> list[str]:
    """The arguments of `python -m etl run` for a case."""
    return ["run", "--portal", base_url, "--election", ELECTION, "--contest", CONTEST,
            "--warehouse", "duckdb:///{data}/warehouse.duckdb"]


def run_in_process(base_url: str, env: Mapping[str, str], data_dir: Path) -> Outcome:
    """`python -m etl run` through `etl.__main__.main`, with a watchdog."""
    from etl.__main__ import main

    args = [a.replace("{data}", str(data_dir)) for a in run_args(base_url)]
    result: dict[str, int] = {}
    out, err = io.StringIO(), io.StringIO()

    def target() -> None:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result["code"] = main(args)

    started = time.perf_counter()
    with patched_env(env):
        worker = threading.Thread(target=target, daemon=True, name="hostile-case")
        worker.start()
        worker.join(CASE_TIMEOUT_S)
    return Outcome(result.get("code"), out.getvalue(), err.getvalue(),
                   time.perf_counter() - started, data_dir, [], base_url)


def run_subprocess(base_url: str, env: Mapping[str, str], data_dir: Path,
                   preexec: Callable[[], None] | None = None) -> Outcome:
    """`python -m etl run` in a process of its own."""
    args = [a.replace("{data}", str(data_dir)) for a in run_args(base_url)]
    started = time.perf_counter()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    try:
        proc = run_etl(*args, env=full_env, timeout=CASE_TIMEOUT_S, preexec_fn=preexec)
        code: int | None = proc.returncode
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = None, str(exc.stdout or ""), str(exc.stderr or "")
    return Outcome(code, stdout, stderr, time.perf_counter() - started, data_dir, [], base_url)


def judge(case: Case, outcome: Outcome, extra: Sequence[str] = ()) -> Verdict:
    """Compare what happened with what the case expects."""
    problems = list(extra)
    if outcome.exit_code is None:
        problems.append(f"did not finish within {CASE_TIMEOUT_S:.0f}s (a hang)")
    elif outcome.exit_code != case.expect_exit:
        problems.append(f"exit {outcome.exit_code}, expected {case.expect_exit}")
    if outcome.exit_code is not None and outcome.published != case.expect_published:
        problems.append(f"published={outcome.published}, expected {case.expect_published} "
                        f"(statuses {outcome.statuses()})")
    for description, check in case.checks if outcome.exit_code is not None else ():
        try:
            ok = check(outcome)
        except Exception as exc:  # a check that cannot even look is a failed check
            problems.append(f"{description}: {exc.__class__.__name__}: {exc}")
            continue
        if not ok:
            problems.append(description)
    return Verdict(case, outcome, tuple(problems))


def run_case(case: Case, workdir: Path) -> Verdict:
    """Serve the case's hostile portal, run one cycle against it, judge the result."""
    workdir.mkdir(parents=True, exist_ok=True)
    if case.run is not None:
        outcome, extra = case.run(case, workdir)
        return judge(case, outcome, extra)
    data_dir = workdir / "data"
    with HostileServer(case.mutate) as portal:
        outcome = run_in_process(portal.base_url, case_env(case, data_dir), data_dir)
        outcome.hits = list(portal.hits.paths)
    return judge(case, outcome)
