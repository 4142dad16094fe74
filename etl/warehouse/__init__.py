"""The warehouse: snapshots, their contest statuses and rows, quality results and seats.

Public API: `load_snapshot`, `previous_published`, `seat_allocation`, `migrate`,
`LoadSummary`, `ContestStatus`. Tables and views are documented for data teams in README.md beside this.
"""

from __future__ import annotations

from etl.warehouse.backends import WarehouseURLError
from etl.warehouse.load import (
    LoadSummary,
    load_snapshot,
    migrate,
    previous_published,
    seat_allocation,
)
from etl.warehouse.snapshot import (
    FAILED,
    PUBLISHED,
    QUARANTINED,
    ContestStatus,
    SnapshotError,
)

__all__ = [
    "FAILED",
    "PUBLISHED",
    "QUARANTINED",
    "ContestStatus",
    "LoadSummary",
    "SnapshotError",
    "WarehouseURLError",
    "load_snapshot",
    "migrate",
    "previous_published",
    "seat_allocation",
]
