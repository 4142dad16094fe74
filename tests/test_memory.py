"""Memory handed back between stages (`etl.memory`), in a process of its own each time.

What a stage freed stays in pyarrow's pool and glibc's arenas unless handed back, and
the next stage's peak adds to it (issue 9: the whole process tree within 2 GB). Each case
runs in a new interpreter, so the RSS it reads is its own and not the test runner's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Reading a Parquet file with many string cells leaves far more in the allocators than
# the table it returns (the load's staging: +500 MiB at 100,000 precincts).
FREED_BY_A_STAGE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from etl.memory import process_memory_mib, release_memory
path = sys.argv[1]
names = pa.array(np.char.add("division-", np.arange(2_000_000).astype(str)).astype(object))
pq.write_table(pa.table({"division_id": names, "votes": np.arange(2_000_000)}), path)
del names
table = pq.read_table(path).slice(0, 10).combine_chunks()  # keep a few rows only
held = process_memory_mib("VmRSS")
release_memory(after="the test's stage", collect=sys.argv[2] == "collect")
print(json.dumps({"held": held, "after": process_memory_mib("VmRSS"), "rows": table.num_rows}))
"""


@pytest.mark.parametrize("collect", ["collect", "no-collect"])
def test_memory_a_stage_freed_is_handed_back(tmp_path: Path, collect: str) -> None:
    # Without the cyclic collection too (the load's staging): Arrow memory is not held by
    # reference cycles.
    run = subprocess.run([sys.executable, "-c", FREED_BY_A_STAGE, str(tmp_path / "t.parquet"),
                          collect], cwd=REPO, capture_output=True, text=True, check=True)
    figures = json.loads(run.stdout)
    assert figures["rows"] == 10
    assert figures["held"] - figures["after"] > 50, figures
    assert "memory after the test's stage: RSS" in run.stderr


def test_the_load_hands_back_what_staging_freed_before_writing(tmp_path: Path) -> None:
    # The load logs the release between staging the snapshot and its transaction.
    script = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO)
from tests.synthetic import warehouse_snapshot
from etl.warehouse.load import load_snapshot
snapshot = warehouse_snapshot("jk2021-memory", counted=1.0)
load_snapshot(f"duckdb:///{sys.argv[1]}/w.duckdb", snapshot.write(Path(sys.argv[1]) / "s"))
"""
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    lines = run.stderr.splitlines()
    released = next(i for i, line in enumerate(lines) if "memory after staging the snapshot" in line)
    loaded = next(i for i, line in enumerate(lines) if "loaded into duckdb" in line)
    assert released < loaded


# Arrays of 8 MiB freed while small allocations made after each stay live: glibc, having
# seen a 30 MiB block freed, serves them from the heap and keeps their pages.
HOLED_HEAP = """
import json, sys
import numpy as np
from etl.memory import bound_heap_retention, process_memory_mib
if sys.argv[1] == "bounded":
    bound_heap_retention()
big = np.ones(30 * 2**20 // 8)
del big
before = process_memory_mib("VmRSS")
arrays, kept = [], []
for _ in range(25):
    arrays.append(np.ones(2**20))
    kept.append(np.ones(1_000))
del arrays
print(json.dumps({"kept_mib": process_memory_mib("VmRSS") - before, "small": len(kept)}))
"""


def test_large_arrays_freed_in_the_gate_go_back_to_the_system() -> None:
    kept = {}
    for mode in ("glibc-default", "bounded"):
        run = subprocess.run([sys.executable, "-c", HOLED_HEAP, mode], cwd=REPO,
                             capture_output=True, text=True, check=True)
        kept[mode] = json.loads(run.stdout)["kept_mib"]
    assert kept["glibc-default"] > 100, kept  # what the setting is for
    assert kept["bounded"] < 20, kept
