"""Column names and pandas dtypes of the normalised snapshot frames.

These names are a public interface: the warehouse tables carry them unchanged. Change
them only together with the README and a warehouse migration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a frame is made: `etl.crawl` imports this module
    import pandas as pd

DIVISIONS: dict[str, str] = {
    "snapshot_id": "string",
    "election_id": "string",
    "contest_id": "string",
    "division_id": "string",
    "parent_id": "string",
    "level": "string",
    "name": "string",
}

TURNOUT: dict[str, str] = {
    "snapshot_id": "string",
    "election_id": "string",
    "contest_id": "string",
    "division_id": "string",
    "registered": "Int64",
    "ballots_issued": "Int64",
    "ballots_cast": "Int64",
    "invalid": "Int64",
    "valid": "Int64",
    "precincts_counted": "Int64",
    "precincts_total": "Int64",
    "turnout_pct_published": "Float64",
}

RESULTS: dict[str, str] = {
    "snapshot_id": "string",
    "election_id": "string",
    "contest_id": "string",
    "division_id": "string",
    "choice_position": "Int64",
    "choice_name": "string",
    "is_against_all": "boolean",
    "votes": "Int64",
    "pct_published": "Float64",
    "pct_computed": "Float64",
}

DQ_RESULTS: dict[str, str] = {
    "snapshot_id": "string",
    "check_id": "string",
    "severity": "string",
    "success": "boolean",
    "contest_id": "string",
    "division_id": "string",
    "choice_position": "Int64",
    "observed": "string",
    "expected": "string",
    "message": "string",
}

FRAMES: dict[str, dict[str, str]] = {
    "divisions": DIVISIONS,
    "turnout": TURNOUT,
    "results": RESULTS,
}


def typed_frame(rows: list[dict[str, object]], columns: dict[str, str]) -> pd.DataFrame:
    """Build a frame with exactly `columns`, in order, cast to their nullable dtypes."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns))
    return frame.astype(columns)
