"""The election-night report: a static site (night index, one page per snapshot) from what the
pipeline left. Public API: `build_report`, `site_dir`, `snapshot_page_path`."""

from __future__ import annotations

from etl.report.site import SiteSummary, build_report, site_dir, snapshot_page_path

__all__ = ["SiteSummary", "build_report", "site_dir", "snapshot_page_path"]
