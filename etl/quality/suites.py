"""Load the Great Expectations suites under `expectations/` and run them on pandas frames.

One ephemeral GX context per process, created on first use and reused: creating the
context and registering the suites costs far more than validating a frame. Each suite
validates one derived frame (the suite's name is the frame's name, see `etl.quality.derive`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl.config import REPO_ROOT
from etl.memory import collector_paused
from etl.quality.catalog import CHECKS_BY_ID

if TYPE_CHECKING:
    import pandas as pd

    from etl.quality.memo import GateMemo

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = REPO_ROOT / "expectations"
# Every failing row must be named, so ask GX for complete unexpected index lists; the
# partial lists and value counts it would also build are not needed.
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}


class SuiteError(RuntimeError):
    """A suite file is malformed, or an expectation raised instead of evaluating."""


@dataclass(frozen=True)
class RuleOutcome:
    """What one expectation found on one frame: the positions of its failing rows."""

    suite: str
    check_id: str
    rule: str
    severity: str
    failing_rows: tuple[int, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class SuiteSpec:
    """A suite file as read from disk, before GX sees it."""

    name: str
    path: Path
    body: dict[str, Any]


def read_suite_specs(expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, SuiteSpec]:
    """Read and check every `*.json` suite: each expectation names a known check and rule."""
    specs: dict[str, SuiteSpec] = {}
    for path in sorted(expectations_dir.glob("*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        name = body.get("name")
        if name != path.stem:
            raise SuiteError(f"{path}: suite name {name!r} must equal the file name {path.stem!r}")
        for expectation in body.get("expectations", []):
            meta = expectation.get("meta") or {}
            check = CHECKS_BY_ID.get(meta.get("check_id", ""))
            if check is None or not meta.get("rule"):
                raise SuiteError(
                    f"{path}: expectation {expectation.get('type')} needs meta.check_id "
                    f"(one of {', '.join(CHECKS_BY_ID)}) and meta.rule"
                )
            if expectation.get("severity", "critical") != check.severity:
                raise SuiteError(
                    f"{path}: {meta['check_id']}/{meta['rule']} has severity "
                    f"{expectation.get('severity')!r}, the check is {check.severity!r}"
                )
        specs[name] = SuiteSpec(name, path, body)
    if not specs:
        raise SuiteError(f"no expectation suites (*.json) in {expectations_dir}")
    return specs


# Packages Great Expectations imports when it is imported, for expectations and renderers
# the gate does not use (distribution tests, charts): their modules are created at once
# but run only when first used. 2.8 -> 1.7 CPU-s for `import great_expectations` here,
# paid by every process that validates (each DAG run's validate task, each `etl run`).
# (SQLAlchemy cannot be deferred: GX subclasses its classes while importing.)
DEFERRED_IMPORTS = ("scipy", "altair")


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Finds modules of `packages` as the other finders do, with a lazy loader."""

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = frozenset(packages)

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] not in self.packages:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


@contextlib.contextmanager
def deferred_imports(packages: Sequence[str] = DEFERRED_IMPORTS) -> Iterator[None]:
    """Within this block, importing a module of `packages` runs it only when it is used
    (`importlib.util.LazyLoader`); modules imported before are not touched."""
    finder = _DeferringFinder(packages)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


class SuiteRunner:
    """The suites of one expectations directory, registered in one ephemeral context.

    The suites are read at once; Great Expectations is imported and its context built on
    the first validation that needs it (`warm`), so a process whose frames are all in a
    `GateMemo` never pays for the import.
    """

    def __init__(self, expectations_dir: Path = EXPECTATIONS_DIR) -> None:
        self.expectations_dir = expectations_dir
        self.specs = read_suite_specs(expectations_dir)
        self._columns = {name: suite_columns(spec.body) for name, spec in self.specs.items()}
        self._context: Any = None
        self._suites: dict[str, Any] = {}
        self._batch_definitions: dict[str, Any] = {}
        # GX contexts are not documented as thread-safe; the DAG may run tasks in threads.
        # The same lock makes the context once when a warm-up thread and the gate race.
        self._lock = threading.Lock()
        # A process forked while another thread held it (the gate's helper) gets it free.
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _unlock_copy(this))

    @property
    def warmed(self) -> bool:
        """Whether Great Expectations is imported and the context built."""
        return self._context is not None

    def warm(self) -> None:
        """Import Great Expectations and build the context (once; later calls return)."""
        with self._lock:
            if self._context is None:
                self._build_context()

    def _build_context(self) -> None:
        gx_log = logging.getLogger("great_expectations")
        if gx_log.level == logging.NOTSET:
            # GX logs hundreds of lines at INFO while importing (its docs decorators) and
            # one per temporary directory: noise in our logs. Set before the import.
            gx_log.setLevel(logging.WARNING)
        started = time.perf_counter()
        # Importing GX makes objects, not garbage: the collections it would set off cost
        # ~0.35 CPU-s and free nothing.
        with deferred_imports(), collector_paused():
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig
            from great_expectations.execution_engine import pandas_execution_engine

        # This GX module pins its own logger to INFO (one line per temporary directory).
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        # GX fingerprints every pandas batch below HASH_THRESHOLD bytes by hashing it whole,
        # for a batch marker we never read: ~20 s per snapshot at 100,000 precincts (pyarrow
        # strings hash through Python objects). Validation itself does not depend on it.
        pandas_execution_engine.HASH_THRESHOLD = 0
        context = gx.get_context(mode="ephemeral")
        # Progress bars would write to stderr on every validation.
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas("snapshot_frames")
        for name, spec in self.specs.items():
            # A copy: GX writes into what it is given (ids), and the suites as read are
            # what the gate memo's keys and the gate's rule checks are made of.
            self._suites[name] = context.suites.add(gx.ExpectationSuite(**copy.deepcopy(spec.body)))
            asset = source.add_dataframe_asset(name=name)
            self._batch_definitions[name] = asset.add_batch_definition_whole_dataframe(name)
        self._context = context
        # The context lives as long as the process: its ~10^6 objects (mostly GX's modules)
        # go out of the cycle collector's way instead of being traversed at every full
        # collection, and at exit (`etl.__main__`).
        gc.freeze()
        log.info(
            "GX ephemeral context with %d suites from %s ready in %.2fs",
            len(self.specs), self.expectations_dir, time.perf_counter() - started,
        )

    def run(
        self, suite: str, frame: pd.DataFrame, parameters: dict[str, float],
        memo: GateMemo | None = None,
    ) -> list[RuleOutcome]:
        """Validate `frame` (with a RangeIndex) against `suite`; one outcome per expectation.

        With a `memo`, a batch GX already validated with the same suite and parameters
        gets the outcomes it got then, without GX; a new one is validated and remembered.
        """
        if suite not in self.specs:
            raise SuiteError(f"no suite {suite!r} in {self.expectations_dir} (have {sorted(self.specs)})")
        if frame.empty:
            return []
        batch = batch_frame(frame, self._columns[suite])
        key = memo.key(self.specs[suite].body, parameters, batch) if memo is not None else None
        if memo is not None and key is not None:
            remembered = memo.get(suite, key)
            if remembered is not None:
                return remembered
        outcomes = self._validate(suite, batch, parameters)
        if memo is not None and key is not None:
            memo.put(suite, key, outcomes)
        return outcomes

    def _validate(
        self, suite: str, batch: pd.DataFrame, parameters: dict[str, float]
    ) -> list[RuleOutcome]:
        self.warm()
        with self._lock:
            validation = self._batch_definitions[suite].get_batch(
                batch_parameters={"dataframe": batch}
            ).validate(
                self._suites[suite], result_format=RESULT_FORMAT, expectation_parameters=parameters
            )
        outcomes = []
        for result in validation.results:
            config = result.expectation_config
            if config is None:
                raise SuiteError(f"suite {suite}: a result without its expectation")
            exception = result.exception_info or {}
            if exception.get("raised_exception"):
                raise SuiteError(
                    f"suite {suite}: {config.type} on {config.kwargs} raised: "
                    f"{exception.get('exception_message')}"
                )
            failing = () if result.success else tuple(
                int(i) for i in result.result.get("unexpected_index_list") or ()
            )
            if not result.success and not failing:
                raise SuiteError(
                    f"suite {suite}: {config.type} failed without naming rows "
                    f"(observed {result.result.get('observed_value')!r})"
                )
            outcomes.append(
                RuleOutcome(
                    suite=suite,
                    check_id=str(config.meta["check_id"]),
                    rule=str(config.meta["rule"]),
                    severity=str(getattr(config.severity, "value", config.severity)),
                    failing_rows=failing,
                    kwargs=dict(config.kwargs),
                )
            )
        return outcomes


    def check_ids(self, suite: str) -> list[str]:
        """The checks `suite`'s expectations belong to, in the suite's order."""
        return [
            str((expectation.get("meta") or {}).get("check_id"))
            for expectation in self.specs[suite].body.get("expectations", [])
        ]


def suite_columns(body: dict[str, Any]) -> list[str]:
    """The columns a suite's expectations name, in order of first mention."""
    columns: dict[str, None] = {}
    for expectation in body.get("expectations", []):
        kwargs = expectation.get("kwargs") or {}
        for key in ("column", "column_A", "column_B"):
            if isinstance(kwargs.get(key), str):
                columns[kwargs[key]] = None
        for column in kwargs.get("column_list") or ():
            columns[str(column)] = None
    return list(columns)


def batch_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """What GX validates: the columns the suite names (as `numpy_numbers`), same rows.

    GX copies its batch for column-pair and multi-column expectations (dropping missing
    values), so handing it only what it reads keeps those copies small. A column the suite
    names but the frame lacks is passed on untouched: GX then fails the expectation
    loudly. Row positions are unchanged, so failures still map back to `frame`.
    """
    present = [column for column in columns if column in frame.columns]
    return numpy_numbers(frame[present] if present else frame)


def numpy_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with nullable numeric columns as numpy float64 (NA -> NaN).

    GX's pandas metrics vectorise only numpy dtypes and call a Python function per value
    on pandas' nullable ones (ten times slower on 60,000 rows). Counts stay exact: they
    are far below 2**53. Row positions are unchanged, so failures map back to `frame`.
    """
    import numpy as np
    import pandas as pd

    converted = {
        name: column.to_numpy(dtype="float64", na_value=np.nan)
        for name, column in frame.items()
        if isinstance(column.dtype, pd.api.extensions.ExtensionDtype)
        and pd.api.types.is_numeric_dtype(column.dtype)
        and not pd.api.types.is_bool_dtype(column.dtype)
    }
    return frame.assign(**converted) if converted else frame


def _unlock_copy(runner: weakref.ref[SuiteRunner]) -> None:
    held = runner()
    if held is not None:
        held._lock = threading.Lock()


@cache
def suite_runner(expectations_dir: Path = EXPECTATIONS_DIR) -> SuiteRunner:
    """The process-wide runner for `expectations_dir` (created once, then reused)."""
    log.debug("creating the GX ephemeral context for %s", expectations_dir)
    return SuiteRunner(expectations_dir)
