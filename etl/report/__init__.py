"""The election-night report: a static site (night index, one page per snapshot) built from
what the pipeline left. Public API: `build_report`, `site_dir`, `snapshot_page_path`.

Importing this package is cheap (the alert step only needs the paths); the builder and its
chart libraries load on the first `build_report` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from etl.report.paths import site_dir, snapshot_page_path

if TYPE_CHECKING:
    from etl.report.site import SiteSummary


def build_report(election_id: str, out_dir: Path | None = None, *, snapshot_id: str | None = None,
                 warehouse_url: str | None = None) -> SiteSummary:
    """Write (or refresh) the election's report site (see `etl.report.site.build_report`)."""
    from etl.report import site

    return site.build_report(election_id, out_dir, snapshot_id=snapshot_id, warehouse_url=warehouse_url)


__all__ = ["build_report", "site_dir", "snapshot_page_path"]
