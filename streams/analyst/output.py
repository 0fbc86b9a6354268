"""What `tally query` and `tally report` print and draw: aligned tables, CSV and JSON, terminal
sparklines, and a report's chart as SVG in HTML (a PNG too when matplotlib is installed)."""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from decimal import Decimal
from pathlib import Path

from streams.analyst import kpis

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
TABLE_CELL_WIDTH = 60
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


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


def chart_svg(series: dict[str, list[tuple[str, float | None]]], kind: str, y_label: str,
              width: int = 900, height: int = 360) -> str:
    """A self-contained SVG line or bar chart (no scripts, no network)."""
    left, right, top, bottom = 60, 20, 20, 90
    plot_w, plot_h = width - left - right, height - top - bottom
    labels: list[str] = []
    for points in series.values():
        for label, _ in points:
            if label not in labels:
                labels.append(label)
    values = [y for points in series.values() for _, y in points if y is not None]
    y_max = max(values + [0.0]) or 1.0
    y_min = min(values + [0.0])
    span = (y_max - y_min) or 1.0

    def y_pos(y: float) -> float:
        return top + plot_h - (y - y_min) / span * plot_h

    slot = plot_w / max(len(labels), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>']
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        tick = y_min + span * fraction
        parts.append(f'<text x="{left - 6}" y="{y_pos(tick) + 4:.1f}" text-anchor="end">{tick:.4g}</text>')
        parts.append(f'<line x1="{left}" y1="{y_pos(tick):.1f}" x2="{left + plot_w}" y2="{y_pos(tick):.1f}" '
                     'stroke="#eee"/>')
    label_every = max(1, len(labels) // 30)
    for i, label in enumerate(labels):
        if i % label_every == 0:
            x = left + slot * (i + 0.5)
            short = label if len(label) <= 24 else label[:23] + "…"
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 12}" text-anchor="end" '
                         f'transform="rotate(-45 {x:.1f} {top + plot_h + 12})">{html.escape(short)}</text>')
    bar_w = slot * 0.8 / max(len(series), 1)
    for n, (name, points) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        xy = [(left + slot * (labels.index(label) + 0.5), y) for label, y in points]
        if kind == "bar":
            for (x, y), (label, _) in zip(xy, points):
                if y is None:
                    continue
                bar_x = x - slot * 0.4 + n * bar_w
                top_y, base_y = y_pos(max(y, 0.0)), y_pos(min(y, 0.0))
                parts.append(f'<rect x="{bar_x:.1f}" y="{top_y:.1f}" width="{bar_w:.1f}" '
                             f'height="{base_y - top_y:.1f}" fill="{color}">'
                             f'<title>{html.escape(f"{name} {label}: {y:g}".strip())}</title></rect>')
        else:
            path = " ".join(f"{x:.1f},{y_pos(y):.1f}" for x, y in xy if y is not None)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y_pos(y):.1f}" r="2.5" fill="{color}">'
                      f'<title>{html.escape(f"{name} {label}: {y:g}".strip())}</title></circle>'
                      for (x, y), (label, _) in zip(xy, points) if y is not None]
    if len(series) > 1:
        for n, name in enumerate(series):
            parts.append(f'<rect x="{left + 10 + n * 120}" y="{height - 14}" width="10" height="10" '
                         f'fill="{PALETTE[n % len(PALETTE)]}"/>'
                         f'<text x="{left + 24 + n * 120}" y="{height - 5}">{html.escape(name)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2:.1f}" transform="rotate(-90 12 {top + plot_h / 2:.1f})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def report_html(title: str, subtitle: str, svg: str, columns: list[str], rows: list[tuple]) -> str:
    """One self-contained page: the chart, then the table it was drawn from."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>"
                     for row in rows)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:2px 8px;text-align:left}} p{{color:#555}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>
{svg}
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
    for n, (name, points) in enumerate(series.items()):
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
    """`<stem>.html` always, `<stem>.png` when matplotlib is importable; returns the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    series = chart_series(columns, rows, kpi.chart)
    subtitle = kpi.description + " — " + ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    html_path = stem.with_suffix(".html")
    html_path.write_text(report_html(kpi.name, subtitle, chart_svg(series, kpi.chart.kind, kpi.chart.y),
                                     columns, rows))
    written = [html_path]
    png_path = stem.with_suffix(".png")
    if write_png(png_path, kpi.name, series, kpi.chart.kind, kpi.chart.y):
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
