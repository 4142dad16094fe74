"""What Great Expectations found on a batch, remembered for the next cycle that sees it again.

A suite's outcome on a batch is a function of the batch (the columns the suite reads, row
by row), the suite, the expectation parameters and the GX version (and of our code that
reads GX's results, whose digest is part of the key): the same four always give the same
failing rows. The memo keys each outcome by a digest of all four, so a cycle
whose derived frames equal the last cycle's (the portal re-stamped every page and changed
nothing else) gets the gate's exact answer without importing GX, which costs more CPU than
the rest of such a cycle's gate. Anything that differs, down to a dtype or one cell, is a
different key and is validated by GX as before; a digest that cannot be made (a column
Arrow cannot hold) means no memo for that batch. One exception, exact too: a column the
suite reads only as part of compound-uniqueness keys (`snapshot_id` in `(snapshot_id,
contest_id, division_id)`) and that holds one non-null value in every row tells no two
rows apart, so the check's outcome does not depend on that value: such a column is
digested as "constant", and a re-stamped snapshot's new id does not make its batches new.

The memo is a JSON file per election in the state directory, written atomically; it holds
the outcomes of the last validation only (one batch per suite), and a file that is missing,
unreadable or of another format is an empty memo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl.quality import suites
from etl.quality.suites import RESULT_FORMAT, RuleOutcome

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MEMO_FORMAT = "cec-gate-memo/1"


@cache
def code_versions() -> str:
    """GX's version and a digest of the code between GX and an outcome (this module and
    `suites.py`, which makes the batch GX sees and reads its results): a change to either
    makes every remembered outcome a miss."""
    try:
        gx = version("great_expectations")
    except PackageNotFoundError:
        gx = "unknown"
    code = hashlib.sha256()
    for module in (__file__, suites.__file__):
        code.update(Path(module).read_bytes())
    return f"{gx} {code.hexdigest()}"


def batch_digest(batch: pd.DataFrame, constant_ok: frozenset[str] = frozenset()) -> str | None:
    """sha256 of a batch's rows: column names, dtypes and values; None if a column has no
    Arrow form. A column of `constant_ok` that holds one non-null value throughout counts
    as "constant", whatever the value.

    Equal digests mean equal batches (but for those constants). Two equal batches may
    still get different digests (NaNs with other bit patterns, an Arrow slice of another
    buffer): that only costs a validation by GX.
    """
    digest = hashlib.sha256(f"{len(batch)} rows\n".encode())
    for name, column in batch.items():
        digest.update(f"{name!s}\t{column.dtype!s}\n".encode())
        if name in constant_ok and len(column) and _one_value(column):
            digest.update(b"constant\n")
        elif not _digest_column(digest, column):
            return None
    return digest.hexdigest()


def _digest_column(digest: Any, column: pd.Series) -> bool:
    """Add a column's values to `digest`, reading its memory where it is: numpy arrays and
    Arrow buffers as they are (no copy: at 100,000 precincts a column has ~2 M rows), any
    other column through Arrow IPC. False when a column has no Arrow form."""
    import numpy as np
    import pyarrow as pa

    if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biufcmM":
        values = np.ascontiguousarray(column.to_numpy())
        digest.update(f"numpy {values.dtype.str} {values.shape}\n".encode())
        digest.update(values.view(np.uint8).data)  # its bytes, whatever the dtype
        return True
    try:
        arrow = pa.chunked_array(pa.array(column, from_pandas=True))
    except (pa.ArrowException, TypeError, ValueError):
        return False
    if pa.types.is_dictionary(arrow.type):  # its buffers would leave out the dictionary
        arrow = arrow.cast(arrow.type.value_type)
    digest.update(f"arrow {arrow.type} {arrow.num_chunks}\n".encode())
    for chunk in arrow.chunks:
        # The whole buffers with the chunk's place in them: equal digests, equal values.
        digest.update(f"{chunk.offset} {len(chunk)} {chunk.null_count}\n".encode())
        for buffer in chunk.buffers():
            if buffer is None:
                digest.update(b"-\n")
            else:
                digest.update(f"{buffer.size}\n".encode())
                digest.update(memoryview(buffer))
    return True


def _one_value(column: pd.Series) -> bool:
    first = column.iloc[0]
    return bool(column.notna().all() and (column == first).all())


def uniqueness_key_columns(suite_body: dict[str, Any]) -> frozenset[str]:
    """Columns the suite names only in `expect_compound_columns_to_be_unique` column lists
    (of expectations without a row condition): a constant one cannot change an outcome."""
    in_keys: set[str] = set()
    elsewhere: set[str] = set()

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list | tuple):
            for item in value:
                yield from strings(item)

    for expectation in suite_body.get("expectations", []):
        kwargs = dict(expectation.get("kwargs") or {})
        if (expectation.get("type") == "expect_compound_columns_to_be_unique"
                and not kwargs.get("row_condition")):
            in_keys.update(str(c) for c in kwargs.pop("column_list", ()))
        elsewhere.update(strings(kwargs))
    return frozenset(in_keys - elsewhere)


@dataclass(frozen=True)
class MemoPart:
    """Outcomes a memo gave or learnt (by suite and key) and how many batches it found or
    missed."""

    used: dict[str, dict[str, list[dict[str, Any]]]]
    hits: int
    misses: int


class GateMemo:
    """Outcomes by suite and key, loaded from and saved to one file (see the module doc)."""

    def __init__(self, path: Path | None = None,
                 entries: dict[str, dict[str, list[dict[str, Any]]]] | None = None) -> None:
        self.path = path
        self._known = entries or {}
        self._used: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def load(cls, path: Path) -> GateMemo:
        """The memo at `path`; an empty one if there is none or it cannot be read."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            log.warning("gate memo %s unreadable (%s): starting an empty one", path, exc)
            return cls(path)
        if not isinstance(document, dict) or document.get("format") != MEMO_FORMAT or not (
                isinstance(document.get("entries"), dict)):
            log.warning("gate memo %s is not %s: starting an empty one", path, MEMO_FORMAT)
            return cls(path)
        return cls(path, document["entries"])

    def key(self, suite_body: dict[str, Any], parameters: dict[str, Any],
            batch: pd.DataFrame) -> str | None:
        """The key of validating `batch` with this suite and parameters; None: no memo."""
        rows = batch_digest(batch, uniqueness_key_columns(suite_body))
        if rows is None:
            return None
        settings = json.dumps([MEMO_FORMAT, code_versions(), RESULT_FORMAT, suite_body, parameters],
                              sort_keys=True, default=str)
        return hashlib.sha256(f"{settings}\n{rows}".encode()).hexdigest()

    def get(self, suite: str, key: str) -> list[RuleOutcome] | None:
        """The outcomes remembered for `key`, or None (then GX validates the batch)."""
        known = self._known.get(suite, {}).get(key)
        if known is None:
            self.misses += 1
            return None
        try:
            outcomes = [RuleOutcome(**{**item, "failing_rows": tuple(item["failing_rows"])})
                        for item in known]
        except (TypeError, KeyError):
            self.misses += 1
            return None
        self.hits += 1
        self._used.setdefault(suite, {})[key] = known
        return outcomes

    def put(self, suite: str, key: str, outcomes: list[RuleOutcome]) -> None:
        """Remember what GX found on the batch of `key`."""
        items = [asdict(outcome) | {"failing_rows": list(outcome.failing_rows)}
                 for outcome in outcomes]
        try:
            exact = json.loads(json.dumps(items)) == items
        except (TypeError, ValueError):
            exact = False
        if not exact:  # kwargs that JSON cannot give back as they are (e.g. tuples)
            return
        self._used.setdefault(suite, {})[key] = items

    def taken(self) -> MemoPart:
        """What this memo has given and learnt so far, for another process's memo to `add`
        (the quality gate's second process checks suites with its own copy)."""
        return MemoPart(self._used, self.hits, self.misses)

    def add(self, part: MemoPart) -> None:
        """Count in what another process's copy of this memo gave and learnt after it was
        copied (`part` counted from there)."""
        for suite, entries in part.used.items():
            self._used.setdefault(suite, {}).update(entries)
        self.hits += part.hits
        self.misses += part.misses

    def save(self) -> None:
        """Write this validation's outcomes (only those: the file stays one snapshot's size).

        A memo that cannot be written is logged and left: it only saves work, and the
        snapshot it was made for is validated either way.
        """
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # writers apart
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"format": MEMO_FORMAT, "entries": self._used}),
                           encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("gate memo %s not written (%s): the next validation runs GX", self.path,
                        exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
