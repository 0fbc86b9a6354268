"""Charts of KPI rows as Plotly figures (plain JSON): one drawing for `tally report`'s HTML and the dashboard.

Plotly.js draws them; its bundle comes with the `plotly` Python package and is served from this
machine (`plotly_js_path`), never fetched from a CDN. Every trace point carries its row's index
as `customdata`, so a click finds the row it came from.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from streams.analyst.kpi_model import Chart

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
SCATTER_LABELS = 12  # a scatter with more points names them on hover only
PARTIAL = "partial"  # a KPI's 0/1 column: the row covers part of its period (a week cut by the range)


def plotly_js_path() -> Path:
    """The minified Plotly.js bundle inside the installed `plotly` package."""
    import plotly
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _label(value) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    text = str(value)
    return text if text != "" else "(none)"


def _number(value):
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def figure(columns: list[str], rows: list[tuple], chart: Chart, title: str = "") -> dict:
    """{"data": [...traces], "layout": {...}} for Plotly.newPlot."""
    at = {name: i for i, name in enumerate(columns)}
    if chart.kind == "heatmap":
        return _heatmap(at, rows, chart, title)
    ys = [chart.y, *chart.more_y]
    partial_at = at.get(PARTIAL)
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        name = _label(row[at[chart.series]]) if chart.series else ""
        groups.setdefault(name, []).append(index)
    traces = []
    for y in ys:
        for name, indices in groups.items():
            trace_name = " · ".join(part for part in (name, y if len(ys) > 1 else "") if part) or y
            xs = [_label(rows[i][at[chart.x]]) for i in indices]
            values = [_number(rows[i][at[y]]) for i in indices]
            color = PALETTE[len(traces) % len(PALETTE)]
            trace = {"type": "bar" if chart.kind == "bar" else "scatter", "name": trace_name, "x": xs, "y": values,
                     "customdata": indices, "marker": {"color": color}}
            if chart.kind == "scatter":
                names = [_label(rows[i][at[chart.label]]) for i in indices] if chart.label else xs
                trace.update(x=[_number(rows[i][at[chart.x]]) for i in indices], hovertext=names,
                             hovertemplate=f"%{{hovertext}}<br>{chart.x} %{{x}}, {chart.y} %{{y}}<extra></extra>")
                if len(indices) <= SCATTER_LABELS:  # names on the chart only while they stay readable
                    trace.update(mode="markers+text", text=names, textposition="top center")
                else:
                    trace["mode"] = "markers"
            elif chart.kind == "line":
                trace["mode"] = "lines+markers"
                if partial_at is not None:  # a partial period is an open marker, named in its hover text
                    partial = [bool(rows[i][partial_at]) for i in indices]
                    trace["marker"] = {"color": color, "size": [9 if p else 6 for p in partial],
                                       "symbol": ["circle-open" if p else "circle" for p in partial]}
                    trace["text"] = ["partial period" if p else "" for p in partial]
                    trace["hovertemplate"] = "%{x}: %{y}<br>%{text}<extra>" + trace_name + "</extra>"
            traces.append(trace)
    layout = {"title": {"text": title}, "margin": {"l": 60, "r": 20, "t": 40 if title else 10, "b": 90},
              "xaxis": {"title": {"text": chart.x}, "automargin": True},
              "yaxis": {"title": {"text": chart.y if len(ys) == 1 else ""}, "rangemode": "tozero"},
              "showlegend": len(traces) > 1, "hovermode": "closest",
              "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"}}
    if chart.kind == "bar":
        layout["barmode"] = "stack" if chart.stacked else "group"
        layout["xaxis"]["type"] = "category"
    if chart.kind == "scatter":
        layout["yaxis"]["title"]["text"] = chart.y
    if chart.x in ("ds", "day", "week", "period", "cohort_week") and chart.kind != "scatter":
        layout["xaxis"]["type"] = "date" if chart.kind == "line" else "category"
    return {"data": traces, "layout": layout}


def _heatmap(at: dict, rows: list[tuple], chart: Chart, title: str) -> dict:
    xs = sorted({row[at[chart.x]] for row in rows})
    ys = sorted({row[at[chart.y]] for row in rows})
    z = [[None] * len(xs) for _ in ys]
    index = [[None] * len(xs) for _ in ys]
    for i, row in enumerate(rows):
        r, c = ys.index(row[at[chart.y]]), xs.index(row[at[chart.x]])
        z[r][c], index[r][c] = _number(row[at[chart.z]]), i
    trace = {"type": "heatmap", "x": [_label(x) for x in xs], "y": [_label(y) for y in ys], "z": z,
             "customdata": index, "colorscale": "Blues", "reversescale": True, "texttemplate": "%{z:.0f}",
             "colorbar": {"title": {"text": chart.z}},
             "hovertemplate": f"{chart.y} %{{y}}, {chart.x} %{{x}}: %{{z:.1f}}<extra></extra>"}
    return {"data": [trace], "layout": {"title": {"text": title}, "margin": {"l": 90, "r": 20, "t": 40 if title else 10,
                                                                          "b": 60},
                                       "xaxis": {"title": {"text": chart.x}, "type": "category"},
                                       "yaxis": {"title": {"text": chart.y}, "type": "category",
                                                 "autorange": "reversed"}}}
