"""What `tally query` and `tally report` print and draw: aligned tables, CSV and JSON, terminal
sparklines, and a report's chart in HTML drawn by Plotly.js (a PNG too when matplotlib is installed)."""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import shutil
from decimal import Decimal
from pathlib import Path

from streams.analyst import charts, kpis

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
TABLE_CELL_WIDTH = 60
PLOTLY_FILE = "plotly.min.js"  # next to the reports: they open offline


# ---- output ------------------------------------------------------------------------------

def format_value(value) -> str:
    """A cell as a person reads it: NULL, short floats, ISO dates."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def format_table(columns: list[str], rows: list[tuple], max_cell: int = TABLE_CELL_WIDTH) -> str:
    """An aligned text table: numbers right-aligned, long cells cut, row count at the end."""
    def cut(text: str) -> str:
        text = text.replace("\n", " ")
        return text if len(text) <= max_cell else text[:max_cell - 1] + "…"

    cells = [[cut(format_value(value)) for value in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(row[i]) or row[i] is None for row in rows) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def format_csv(columns: list[str], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v if isinstance(v, (str, int, float)) else format_value(v)
                         for v in row])
    return buffer.getvalue()


def format_json(columns: list[str], rows: list[tuple]) -> str:
    """A JSON array with one object per row."""
    return json.dumps([dict(zip(columns, row)) for row in rows], default=str, ensure_ascii=False, indent=1)


FORMATTERS = {"table": format_table, "csv": format_csv, "json": format_json}


# ---- charts ------------------------------------------------------------------------------

def sparkline(values: list) -> str:
    """One block character per value, scaled from the smallest to the largest; None is a gap."""
    numbers = [float(v) for v in values if v is not None]
    if not numbers:
        return " " * len(values)
    low, high = min(numbers), max(numbers)
    top = len(SPARK_BLOCKS) - 1

    def block(value) -> str:
        if value is None:
            return " "
        level = top // 2 if high == low else round((float(value) - low) / (high - low) * top)
        return SPARK_BLOCKS[level]
    return "".join(block(v) for v in values)


def chart_series(columns: list[str], rows: list[tuple], chart: kpis.Chart) -> dict[str, list[tuple[str, float | None]]]:
    """Series name -> [(x label, y value)] in row order; one series named '' when the chart has none."""
    x_at, y_at = columns.index(chart.x), columns.index(chart.y)
    series_at = columns.index(chart.series) if chart.series else None
    series: dict[str, list] = {}
    for row in rows:
        name = "" if series_at is None else format_value(row[series_at])
        y = row[y_at]
        series.setdefault(name, []).append((format_value(row[x_at]), None if y is None else float(y)))
    return series


def describe_params(params: dict) -> str:
    """The filters a report ran with, as a person says them: "all apps, from the first event to 2026-12-03"."""
    parts = [f"app {params['app']}" if params.get("app") else "all apps"]
    since, until = params.get("since"), params.get("until")
    if until is not None:
        start = "from the first event" if since in (None, kpis.EARLIEST) else f"from {format_value(since)}"
        parts.append(f"{start} to {format_value(until)}")
    parts += [f"{name} {params[name]}" for name in ("role", "team", "ab") if params.get(name)]
    parts += [f"{name} {format_value(value)}" for name, value in params.items()
              if name not in kpis.COMMON_PARAMS and value not in ("", None)]
    return ", ".join(parts)


def report_html(title: str, subtitle: str, figure: dict, columns: list[str], rows: list[tuple],
                plotly_src: str = PLOTLY_FILE) -> str:
    """One page: the chart (Plotly.js from a file next to it, no network), then the table it was drawn from."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>"
                     for row in rows)
    note = ("<p>Open markers: a period the range cuts (a partial week), counted over its days in the range.</p>"
            if charts.PARTIAL in columns and any(row[columns.index(charts.PARTIAL)] for row in rows) else "")
    spec = json.dumps(figure, default=str).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script src="{html.escape(plotly_src)}"></script>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:2px 8px;text-align:left}} p{{color:#555}} #chart{{height:420px}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>{note}
<div id="chart"></div>
<script>const figure = {spec}; Plotly.newPlot("chart", figure.data, figure.layout, {{displaylogo: false, responsive: true}});</script>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table></body></html>
"""


def write_png(path: Path, title: str, series: dict, kind: str, y_label: str) -> bool:
    """A PNG of the chart when matplotlib is installed (it is not a dependency); False otherwise."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(10, 4))
    for name, points in series.items():
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if kind == "bar":
            axes.bar([f"{name} {x}".strip() if len(series) > 1 else x for x in xs], ys, label=name or None)
        else:
            axes.plot(xs, ys, marker=".", label=name or None)
    axes.set_title(title)
    axes.set_ylabel(y_label)
    axes.tick_params(axis="x", labelrotation=45, labelsize=7)
    if len(series) > 1:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def write_report_files(stem: Path, kpi: kpis.Kpi, params: dict, columns: list[str], rows: list[tuple]) -> list[Path]:
    """`<stem>.html` (with Plotly.js copied next to it once), `<stem>.png` when matplotlib is importable;
    returns the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    bundle, local = charts.plotly_js_path(), stem.parent / PLOTLY_FILE
    if not local.exists() or local.stat().st_size != bundle.stat().st_size:
        shutil.copyfile(bundle, local)
    subtitle = f"{kpi.description}. {describe_params(params)}."
    html_path = stem.with_suffix(".html")
    html_path.write_text(report_html(kpi.name, subtitle, charts.figure(columns, rows, kpi.chart), columns, rows))
    written = [html_path]
    png_path = stem.with_suffix(".png")
    if kpi.chart.kind in ("line", "bar") and write_png(png_path, kpi.name, chart_series(columns, rows, kpi.chart),
                                                       kpi.chart.kind, kpi.chart.y):
        written.append(png_path)
    return written


def sparkline_lines(columns: list[str], rows: list[tuple], chart: kpis.Chart) -> list[str]:
    """`y: ▁▃▅█  (min .., max ..)` per series, for the terminal."""
    lines = []
    for name, points in chart_series(columns, rows, chart).items():
        ys = [y for _, y in points]
        known = [y for y in ys if y is not None]
        label = f"{chart.y} [{name}]" if name else chart.y
        bounds = f"  (min {min(known):g}, max {max(known):g})" if known else ""
        lines.append(f"{label}: {sparkline(ys)}{bounds}")
    return lines


def list_reports() -> str:
    width = max(len(name) for name in kpis.KPIS)
    return "\n".join(f"{name.ljust(width)}  {kpi.description}" for name, kpi in kpis.KPIS.items())
