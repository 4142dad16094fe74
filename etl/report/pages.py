"""HTML of the report's pages: plain markup around tables and chart slots.

Charts are Vega-Lite specs placed in a JSON script block and drawn by vega-embed from the
bundle in `assets/` (SVG renderer, so every mark is a node a test can count).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.published{background:#e8f5e9}.quarantined{background:#ffebee}.failed{background:#f3e5f5}
.unavailable{background:#eeeeee}.unchanged{color:#777}
.critical{background:#ffebee}.warning{background:#fff8e1}.ok{background:#e8f5e9}
.banner{padding:.6em 1em;border-left:6px solid #c62828;background:#ffebee;margin:1em 0}
.note{color:#555;font-size:.9em}.chart{margin:1em 0}.charts{display:flex;flex-wrap:wrap;gap:1em}
nav a{margin-right:1em}
"""

esc = html.escape


def page(title: str, body: Sequence[str], charts: dict[str, dict[str, Any]], bundle_href: str) -> str:
    """A whole page: the body's parts, then the script that draws `charts` into their slots."""
    specs = json.dumps(_json_safe(charts), ensure_ascii=False, separators=(",", ":"),
                       allow_nan=False).replace("</", "<\\/")
    return "\n".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<link rel='icon' href='data:,'>",  # no favicon request: the site is files only
        f"<title>{esc(title)}</title><style>{STYLE}</style>",
        f"<script src='{esc(bundle_href)}'></script></head><body>",
        *body,
        f"<script type='application/json' id='chart-specs'>{specs}</script>",
        "<script>",
        "const specs = JSON.parse(document.getElementById('chart-specs').textContent);",
        "window.chartsDrawn = Promise.all(Object.entries(specs).map(([id, spec]) =>",
        "  vegaEmbed('#' + id, spec, {renderer: 'svg', actions: false})));",
        "window.chartsDrawn.catch(error => console.error('chart failed: ' + error));",
        "</script></body></html>",
    ])


def _json_safe(value: Any) -> Any:
    """NaN and infinities (missing figures in a frame) become null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def chart_slot(chart_id: str) -> str:
    """The element a chart is drawn into."""
    return f"<div class='chart' id='{esc(chart_id)}' data-chart='{esc(chart_id)}'></div>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Iterable[str] = (),
          numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells (links are markup); `numeric` columns align right."""
    classes = list(row_classes)
    parts = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for index, row in enumerate(rows):
        css = f" class='{esc(classes[index])}'" if index < len(classes) and classes[index] else ""
        cells = "".join(f"<td class='num'>{cell}</td>" if i in numeric else f"<td>{cell}</td>"
                        for i, cell in enumerate(row))
        parts.append(f"<tr{css}>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def link(href: str, text: str) -> str:
    """An escaped link."""
    return f"<a href='{esc(href)}'>{esc(text)}</a>"


def pct(value: float | None, digits: int = 2) -> str:
    """`86.96%`, or an en dash when unknown."""
    return "–" if value is None else f"{value:.{digits}f}%"


def number(value: int | float | None) -> str:
    """`1,234`, or an en dash when unknown."""
    return "–" if value is None else f"{int(value):,}"
