"""Where the report's files go: light enough for the alert step to import."""

from __future__ import annotations

from pathlib import Path

from etl import config


def site_dir(election_id: str) -> Path:
    """Default output directory of an election's report: `<report dir>/<election>/`."""
    return config.report_dir() / election_id


def page_name(snapshot_id: str) -> str:
    """File name of a snapshot's page (ids are safe path segments, but be sure)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in snapshot_id)
    return f"{safe}.html"


def snapshot_page_path(out_dir: Path, snapshot_id: str) -> Path:
    """Where a snapshot's page is (or will be) written; alerts link to it."""
    return out_dir / "snapshots" / page_name(snapshot_id)
