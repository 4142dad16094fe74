"""A self-contained HTML report of one validation run, for the people on call.

Our own page rather than GX Data Docs: the suites validate derived frames whose row
numbers mean nothing to a reader, while `dq_results` already carries each failure's
division, line and message. One file per snapshot, named by its id.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from etl.quality.catalog import CHECKS

log = logging.getLogger(__name__)

# Failures listed per (check, contest); the rest are in dq_results.parquet. A formula
# error touches every line of every division (tens of thousands of rows).
MAX_LISTED = 200

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
.critical{background:#fde2e1}.warning{background:#fff4d6}.ok{background:#e6f4e6}
.muted{color:#777}h2{margin-top:2em}
"""


def report_name(snapshot_id: str) -> str:
    """File name of a snapshot's report (ids are safe path segments, but be sure)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in snapshot_id)
    return f"{safe}.html"


def write_report(dq_results: pd.DataFrame, snapshot_meta: dict[str, Any], report_dir: Path) -> Path:
    """Write the HTML report of one run to `report_dir`; return its path."""
    snapshot_id = str(snapshot_meta.get("snapshot_id", "unknown"))
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / report_name(snapshot_id)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_report(dq_results, snapshot_meta), encoding="utf-8")
    os.replace(tmp, path)
    log.info("quality report of snapshot %s written to %s", snapshot_id, path)
    return path


def render_report(dq_results: pd.DataFrame, snapshot_meta: dict[str, Any]) -> str:
    """The report as one HTML string."""
    esc = html.escape
    summaries = dq_results[dq_results["division_id"].isna()]
    failures = dq_results[dq_results["division_id"].notna()]
    failed = summaries[~summaries["success"].astype(bool)]
    critical = sorted(
        {str(c) for c in failed.loc[failed["severity"] == "critical", "contest_id"].dropna()}
    )
    snapshot_id = str(snapshot_meta.get("snapshot_id", "unknown"))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Data quality — {esc(snapshot_id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Data quality of snapshot {esc(snapshot_id)}</h1>",
        "<table>",
    ]
    for label, key in (
        ("election", "election_id"),
        ("portal updated at", "portal_updated_at"),
        ("fetched at", "fetched_at"),
        ("pages fetched", "pages_fetched"),
        ("pages failed", "pages_failed"),
    ):
        parts.append(f"<tr><th>{label}</th><td>{esc(str(snapshot_meta.get(key, '')))}</td></tr>")
    verdict = (
        f"<b>quarantined</b>: {esc(', '.join(critical))}" if critical else "none quarantined"
    )
    parts += [
        f"<tr><th>contests</th><td>{verdict}</td></tr></table>",
        "<h2>Checks</h2><table><tr><th>check</th><th>severity</th><th>meaning</th></tr>",
    ]
    for check in CHECKS:
        parts.append(
            f"<tr><td>{check.check_id} {esc(check.title)}</td><td>{check.severity}</td>"
            f"<td>{esc(check.meaning)}</td></tr>"
        )
    parts.append("</table><h2>Summary per check and contest</h2>")
    parts.append(_summary_table(summaries))
    parts.append("<h2>Failures</h2>")
    if failures.empty:
        parts.append("<p>No failures.</p>")
    for (check_id, contest), group in failures.groupby(
        ["check_id", "contest_id"], sort=False, dropna=False
    ):
        severity = str(group["severity"].iloc[0])
        where = "(election)" if contest is None or contest is pd.NA else str(contest)
        parts.append(
            f"<h3 class='{severity}'>{esc(str(check_id))} · {esc(where)} · {severity} · "
            f"{len(group)} failure(s)</h3><table><tr><th>division</th><th>line</th>"
            "<th>observed</th><th>expected</th><th>message</th></tr>"
        )
        for row in group.head(MAX_LISTED).itertuples(index=False):
            position = "" if row.choice_position is pd.NA else str(row.choice_position)
            parts.append(
                f"<tr><td>{esc(str(row.division_id))}</td><td>{esc(position)}</td>"
                f"<td>{esc(str(row.observed))}</td><td>{esc(str(row.expected))}</td>"
                f"<td>{esc(str(row.message))}</td></tr>"
            )
        parts.append("</table>")
        if len(group) > MAX_LISTED:
            parts.append(
                f"<p class='muted'>… and {len(group) - MAX_LISTED} more in dq_results.parquet "
                "(check_id, contest_id).</p>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary_table(summaries: pd.DataFrame) -> str:
    esc = html.escape
    rows = ["<table><tr><th>check</th><th>contest</th><th>result</th><th>message</th></tr>"]
    # Failed pairs first, so the page opens on what needs attention.
    ordered = summaries.assign(_ok=summaries["success"].astype(bool)).sort_values(
        "_ok", kind="stable"
    )
    for row in ordered.itertuples(index=False):
        css = "ok" if row.success else str(row.severity)
        result = "passed" if row.success else f"failed ({row.observed})"
        if row.success and row.observed == "skipped":
            result = "skipped"
        contest = "(election)" if row.contest_id is pd.NA else str(row.contest_id)
        rows.append(
            f"<tr class='{css}'><td>{esc(str(row.check_id))}</td><td>{esc(contest)}</td>"
            f"<td>{esc(result)}</td><td>{esc(str(row.message))}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)
