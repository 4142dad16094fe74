"""The report's charts as Vega-Lite specifications, built with Altair.

Each function returns a plain dict (the spec, data inlined), which the page hands to
vega-embed; nothing here draws. The Vega/Vega-Lite/vega-embed bundle comes from
vl-convert (`javascript_bundle`), written once beside the pages, so the site needs no CDN.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from etl.report.regions import region_shapes

STATUS_COLOURS = {"published": "#2e7d32", "quarantined": "#c62828", "failed": "#6a1b9a",
                  "unavailable": "#9e9e9e", "unchanged": "#bdbdbd"}
WIDTH = 640
SHAPES = "region-shapes"  # the named dataset a map's region boundaries are in


def _spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    spec: dict[str, Any] = chart.to_dict()
    return spec


def timeline(runs: pd.DataFrame) -> dict[str, Any]:
    """Counted % and the parties' published % sum per run, incidents marked.

    `runs`: one row per run with `run` (label, in order), `counted_pct`, `parties_pct`,
    `status`, `incident` (text or empty).
    """
    order = runs["run"].tolist()
    x = alt.X("run:N", sort=order, title="run (portal time)", axis=alt.Axis(labelAngle=-50),
              scale=alt.Scale(domain=order))
    long = runs.melt(id_vars=["run", "status"], value_vars=["counted_pct", "parties_pct"],
                     var_name="series", value_name="pct").dropna(subset=["pct"])
    long["series"] = long["series"].map({"counted_pct": "protocols counted %",
                                         "parties_pct": "parties' published % (sum)"})
    base = alt.Chart(long)
    lines = base.mark_line(point=True).encode(
        x=x, y=alt.Y("pct:Q", title="%", scale=alt.Scale(domain=[0, 160])),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["run:N", "series:N", alt.Tooltip("pct:Q", format=".2f")])
    hundred = alt.Chart(pd.DataFrame({"y": [100.0]})).mark_rule(strokeDash=[4, 4], color="#555").encode(
        y="y:Q")
    incidents = runs[runs["incident"] != ""].copy()
    incidents["y"] = incidents["parties_pct"].fillna(8.0)
    marks = alt.Chart(incidents).mark_point(shape="triangle-down", size=180, filled=True).encode(
        x=x, y="y:Q",
        color=alt.Color("status:N", scale=alt.Scale(domain=list(STATUS_COLOURS),
                                                    range=list(STATUS_COLOURS.values())),
                        title="status"),
        tooltip=["run:N", "status:N", "incident:N"])
    labels = alt.Chart(incidents).mark_text(dy=-14, fontSize=11, fontWeight="bold").encode(
        x=x, y="y:Q", text="incident:N")
    # Series and statuses are two colour legends, not one shared scale.
    return _spec(alt.layer(lines, hundred, marks, labels).resolve_scale(color="independent").properties(
        width=WIDTH, height=300, title="The night: count progress and the parties' published sum"))


def seat_history(seats: pd.DataFrame, order: list[str]) -> dict[str, Any]:
    """Projected seats per party per published run (stacked bars)."""
    chart = alt.Chart(seats).mark_bar().encode(
        x=alt.X("run:N", sort=order, title="run (portal time)", axis=alt.Axis(labelAngle=-50)),
        y=alt.Y("seats:Q", title="seats", stack="zero"),
        color=alt.Color("party:N", title="party", legend=alt.Legend(columns=1, labelLimit=220)),
        tooltip=["run:N", "party:N", "seats:Q"])
    return _spec(chart.properties(width=WIDTH, height=240,
                                  title="Seat projection as counting proceeds (published runs)"))


def national_bars(lines: pd.DataFrame, threshold_pct: float | None) -> dict[str, Any]:
    """Published % per ballot line as bars, the computed % as ticks, the threshold as a rule.

    `lines`: `line`, `pct_published`, `pct_computed`, `passes`.
    """
    order = lines.sort_values("pct_computed", ascending=False)["line"].tolist()
    y = alt.Y("line:N", sort=order, title=None, axis=alt.Axis(labelLimit=260))
    bars = alt.Chart(lines).mark_bar().encode(
        x=alt.X("pct_published:Q", title="% of ballots cast"), y=y,
        color=alt.Color("passes:N", title="threshold",
                        scale=alt.Scale(domain=["passes", "below", "against all"],
                                        range=["#1565c0", "#90a4ae", "#8d6e63"])),
        tooltip=["line:N", alt.Tooltip("pct_published:Q", format=".2f", title="published %"),
                 alt.Tooltip("pct_computed:Q", format=".2f", title="computed %")])
    ticks = alt.Chart(lines).mark_tick(color="black", thickness=2).encode(
        x="pct_computed:Q", y=y)
    layers: list[Any] = [bars, ticks]
    if threshold_pct is not None:
        layers.append(alt.Chart(pd.DataFrame({"x": [threshold_pct]})).mark_rule(
            color="#c62828", strokeDash=[6, 3], size=2).encode(x="x:Q"))
    return _spec(alt.layer(*layers).properties(
        width=WIDTH - 200, height=max(120, 18 * len(lines)),
        title="National results: bars published %, ticks computed %, red line the threshold"))


def seat_bar(seats: pd.DataFrame, total: int) -> dict[str, Any]:
    """One stacked bar of the seats, a segment per party with its seat count."""
    seats = seats[seats["seats"] > 0]
    base = alt.Chart(seats).encode(
        x=alt.X("seats:Q", stack="zero", title=f"seats (of {total})",
                scale=alt.Scale(domain=[0, total])),
        order=alt.Order("order:Q"))
    bars = base.mark_bar(height=40).encode(
        color=alt.Color("party:N", title="party", legend=alt.Legend(orient="bottom", columns=2,
                                                                    labelLimit=260)),
        tooltip=["party:N", "seats:Q"])
    # Labels at each segment's midpoint (a stacked text mark would sit at the ends).
    mid = seats.assign(mid=seats["seats"].cumsum() - seats["seats"] / 2)
    labels = alt.Chart(mid).mark_text(color="white", fontWeight="bold").encode(
        x="mid:Q", text="seats:Q")
    return _spec(alt.layer(bars, labels).properties(width=WIDTH, height=60,
                                                    title="Seat projection from this snapshot"))


def region_map(regions: pd.DataFrame, field: str, title: str, nominal: bool) -> dict[str, Any]:
    """A choropleth of the regions: `regions` has `pcode`, `region`, and `field`."""
    shapes = region_shapes()
    lookup = regions[["pcode", "region", field]].rename(columns={field: "value"})
    colour = (alt.Color("value:N", title=title, legend=alt.Legend(labelLimit=220))
              if nominal else alt.Color("value:Q", title=title, scale=alt.Scale(scheme="blues")))
    # The shapes join the spec as plain JSON after Altair has made it: given to Altair, its
    # to_dict() walked and validated every coordinate (~0.5 s a map, two maps a page).
    chart = alt.Chart(alt.Data(name=SHAPES)).mark_geoshape(
        stroke="white", strokeWidth=1).transform_lookup(
        lookup="properties.pcode",
        from_=alt.LookupData(data=alt.Data(values=lookup.to_dict("records")), key="pcode",
                             fields=["region", "value"]),
    ).encode(color=colour, tooltip=["region:N", alt.Tooltip("value:" + ("N" if nominal else "Q"),
                                                             title=title)]
    ).project(type="mercator")
    spec = _spec(chart.properties(width=WIDTH - 160, height=260, title=title))
    spec.setdefault("datasets", {})[SHAPES] = shapes["features"]
    return spec


def fingerprint(turnout: np.ndarray, share: np.ndarray, leader: str) -> dict[str, Any]:
    """2-D histogram of precinct turnout × the leading party's share (Klimek et al. 2012)."""
    edges = np.linspace(0, 100, 51)
    counts, _, _ = np.histogram2d(turnout * 100, share * 100, bins=[edges, edges])
    cells = pd.DataFrame([
        {"turnout": edges[i], "turnout_end": edges[i + 1], "share": edges[j],
         "share_end": edges[j + 1], "precincts": int(counts[i, j])}
        for i, j in zip(*np.nonzero(counts), strict=True)])
    if cells.empty:
        cells = pd.DataFrame(columns=["turnout", "turnout_end", "share", "share_end", "precincts"])
    chart = alt.Chart(cells).mark_rect().encode(
        x=alt.X("turnout:Q", title="turnout %", scale=alt.Scale(domain=[0, 100])),
        x2="turnout_end:Q",
        y=alt.Y("share:Q", title=f"share of {leader} %", scale=alt.Scale(domain=[0, 100])),
        y2="share_end:Q",
        color=alt.Color("precincts:Q", scale=alt.Scale(scheme="viridis", type="log")),
        tooltip=["turnout:Q", "share:Q", "precincts:Q"])
    return _spec(chart.properties(width=300, height=300,
                                  title="Fingerprint: precincts by turnout and leader's share"))


def last_digits(frequencies: np.ndarray) -> dict[str, Any]:
    """Share of each last digit of the vote counts, the uniform 10% as a rule."""
    digits = pd.DataFrame({"digit": [str(d) for d in range(10)], "share": frequencies * 100})
    bars = alt.Chart(digits).mark_bar().encode(
        x=alt.X("digit:N", title="last digit"), y=alt.Y("share:Q", title="% of counts"),
        tooltip=["digit:N", alt.Tooltip("share:Q", format=".2f")])
    rule = alt.Chart(pd.DataFrame({"y": [10.0]})).mark_rule(color="#c62828").encode(y="y:Q")
    return _spec(alt.layer(bars, rule).properties(width=300, height=300,
                                                  title="Last digits of precinct vote counts"))
