"""Memory of this process: what it holds (/proc), and handing freed memory back.

At 100,000 precincts a stage's frames are hundreds of MiB; what one stage frees stays in
the allocators' caches unless it is handed back, and the next stage's peak adds to it
(issue 9: the whole process tree within 2 GB).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


def release_memory(after: str, *, collect: bool = True) -> None:
    """Hand memory freed by a finished stage back to the system before the next one.

    One `etl run` assembles, validates and loads in one process (the crawl runs in a child,
    `etl.forked`); without this, what a stage freed stays in the allocators' caches
    (pyarrow's mimalloc pool, glibc's arenas) and adds to the next stage's peak (issue 9's
    memory budget).

    `collect=False` skips the cyclic collection first, for a stage that made no Python
    garbage cycles (Arrow tables only): in a process whose objects are not frozen (a test
    runner, an Airflow task) a full collection costs 0.2-0.3 s and found nothing there.
    """
    import pyarrow as pa

    before = process_memory_mib("VmRSS") or float("nan")
    if collect:
        gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the pool's release it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    log.info("memory after %s: RSS %.0f -> %.0f MiB", after, before,
             process_memory_mib("VmRSS") or float("nan"))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection within this block: for code that makes many objects
    and no garbage (opening a large archive, importing Great Expectations), whose
    allocations would otherwise set off collections that scan everything made so far."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# glibc's mallopt parameter, and the size from which an allocation gets pages of its own.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 2**20


def bound_heap_retention() -> None:
    """Give every allocation of 4 MiB or more pages of its own, returned when it is freed.

    glibc does that from 128 KiB on, but raises the threshold to the size of the largest
    such block freed so far (up to 32 MiB): after the quality gate frees its first column
    of 1.9 M rows, its later arrays of 8-32 MiB come from the heap, and a heap holed by
    arrays of different lifetimes keeps their pages. A fixed threshold keeps that from
    happening (a 100,000-precinct incremental cycle's peak, in the gate: 1,949 -> 1,869
    MiB; `tests/test_memory.py`). Smaller allocations are as before. Not glibc: nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def process_memory_mib(field: str) -> float | None:
    """A memory figure of this process's /proc/self/status (VmRSS, VmHWM, …) in MiB; None
    where there is none (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
