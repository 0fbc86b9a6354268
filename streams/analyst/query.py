"""Tools for analysts: `tally query "SQL"` and `tally report NAME`, wherever the data lives.

With embedded chDB only one process can own the data directory. While a worker runs (it writes
`<data_dir>/worker.json`), queries go to the worker's HTTP endpoint; otherwise this process opens
ClickHouse itself. `open_query_target` makes that choice, so the user never has to.
"""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streams.analyst import kpis, people

WORKER_QUERY_PATH = "/query/"     # served by streams/runtime/web.py
WORKER_TIMEOUT_SECONDS = 600      # analyst queries may scan a lot; the worker answers when done
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
TABLE_CELL_WIDTH = 60
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


class QueryError(Exception):
    """The query failed; the message is one line a person can act on."""


# ---- running SQL -------------------------------------------------------------------------

def error_message(exc: BaseException) -> str:
    """The line of a ClickHouse error that says what went wrong (drivers wrap it in more lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "DB::Exception" in line or line.startswith("Code:"):
            return line
    return lines[0] if lines else type(exc).__name__


def _looks_like_select(sql: str) -> bool:
    return bool(re.match(r"\s*(\(\s*)*(SELECT|WITH)\b", sql, re.IGNORECASE))


# ClickHouse's readonly=2: reads, and settings for the query itself; no writes, no DDL
READ_ONLY = {"readonly": 2}
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_READ_STATEMENT = re.compile(r"(\(\s*)*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.IGNORECASE)


def single_statement(sql: str) -> str:
    """The SQL without a trailing `;`; QueryError if it holds more than one statement. Embedded
    ClickHouse would run them all, and a per-query setting (read-only) reaches only the last."""
    quote = None
    index, length = 0, len(sql)
    while index < length:
        char = sql[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif sql.startswith("--", index):
            newline = sql.find("\n", index)
            index = length if newline < 0 else newline
        elif sql.startswith("/*", index):
            end = sql.find("*/", index + 2)
            index = length if end < 0 else end + 1
        elif char == ";":
            rest = sql[index + 1:]
            if rest[_LEADING_COMMENTS.match(rest).end():]:
                raise QueryError("one statement at a time: this SQL holds more than one (separated by ';')")
            return sql[:index]
        index += 1
    return sql


def is_read_statement(sql: str) -> bool:
    """Whether the statement only reads (its first keyword, past comments). A read-only query that
    is not one is refused before it is sent: on chDB a refused statement would leave the whole
    session read-only (the per-call setting cannot be lifted again), the worker's inserts with it."""
    return bool(_READ_STATEMENT.match(sql, _LEADING_COMMENTS.match(sql).end()))


def run_query(client, sql: str, parameters: dict | None = None,
              settings: dict | None = None) -> tuple[list[str], list[tuple]]:
    """Column names and rows of `sql`; raises QueryError with ClickHouse's message."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    sql = single_statement(sql)
    if settings is READ_ONLY and not is_read_statement(sql):
        raise QueryError(not_a_read(sql))
    try:
        result = client.query(sql, parameters=parameters or None, settings=settings)
        columns, rows = list(result.column_names), [tuple(row) for row in result.result_rows]
        if not columns and not rows and _looks_like_select(sql):
            # chDB returns no column names for an empty result; ask for them so the header still shows.
            described = client.query(f"DESCRIBE ({sql.strip().rstrip(';')})", parameters=parameters or None,
                                     settings=settings)
            columns = [row[0] for row in described.result_rows]
    except ClickHouseError as exc:
        raise QueryError(with_hint(in_user_terms(error_message(exc), sql), settings is READ_ONLY)) from None
    return columns, rows


def in_user_terms(message: str, sql: str) -> str:
    """ClickHouse's message about the SQL as the user typed it: without the settings and format
    clauses the driver appends, and a syntax error past the end said as such."""
    message = re.sub(r"\s*SETTINGS readonly = '?2'?|\s*FORMAT Native", "", message)
    position = re.search(r"Syntax error: failed at position (\d+)", message)
    if position and int(position.group(1)) > len(sql.rstrip()):
        return ("Syntax error: the SQL ends too early (after "
                f"{sql.rstrip()[-40:]!r}); something is missing at its end")
    return message


READ_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "EXPLAIN", "EXISTS")


def not_a_read(sql: str) -> str:
    """Why a statement is not run read-only, in the user's words: a change, or a mistyped keyword."""
    import difflib

    first = re.match(r"\w*", sql[_LEADING_COMMENTS.match(sql).end():]).group(0)
    near = difflib.get_close_matches(first.upper(), READ_KEYWORDS, n=1, cutoff=0.6)
    if first and near:
        return f"{first!r} is not a keyword of a query; did you mean {near[0]}?"
    return ("this SQL may change data or tables, and `tally query` and `tally report` only read: add "
            "--admin to change them on purpose")


def with_hint(message: str, read_only: bool) -> str:
    """ClickHouse's message, with what to do when the cause is one a user of Tally meets."""
    if read_only and ("readonly mode" in message or "Code: 164" in message):
        return not_a_read("")
    if "Code: 60" in message and re.search(r"\b(user_actions|dead_letters|user_profiles|kpi_\w+)\b", message):
        return message + "; is this a Tally store? A worker creates its tables, or run `tally migrate`"
    return message


def handle_query_request(client, body: dict, admin_allowed: bool = False) -> tuple[int, dict]:
    """The worker's `POST /query`: {"sql", "parameters", "admin"} -> (HTTP status, JSON-able answer).
    Read-only unless the request asks for `"admin": true` and the worker was started with
    --admin-sql: the port may be reachable by more than its owner."""
    if not isinstance(body, dict) or not isinstance(body.get("sql"), str) or not body["sql"].strip():
        return 400, {"error": 'expected a JSON object {"sql": "...", "parameters": {...}}'}
    parameters = body.get("parameters") or None
    if parameters is not None and not isinstance(parameters, dict):
        return 400, {"error": "parameters must be a JSON object"}
    if body.get("admin") is True and not admin_allowed:
        return 403, {"error": "this worker takes only reads (it was not started with --admin-sql): stop it and "
                              "run the command again, or restart it with --admin-sql"}
    read_only = body.get("admin") is not True
    try:
        columns, rows = run_query(client, body["sql"], parameters, READ_ONLY if read_only else None)
    except QueryError as exc:
        return 400, {"error": str(exc)}
    return 200, {"columns": columns, "rows": [list(row) for row in rows]}


class DirectTarget:
    """ClickHouse opened by this process (chDB data directory or a server); read-only unless `admin`."""

    def __init__(self, client, admin: bool = False) -> None:
        self.client, self.admin = client, admin

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        return run_query(self.client, sql, parameters, None if self.admin else READ_ONLY)


class WorkerTarget:
    """ClickHouse owned by a running worker, reached through its HTTP endpoint."""

    def __init__(self, url: str, timeout: float = WORKER_TIMEOUT_SECONDS, admin: bool = False) -> None:
        self.url, self.timeout, self.admin = url, timeout, admin

    def query(self, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
        body = json.dumps({"sql": sql, "parameters": parameters or {}, "admin": self.admin}, default=str).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read() or b"{}").get("error")
            except ValueError:
                message = None
            raise QueryError(message or f"the worker at {self.url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise QueryError(f"a worker is running but its endpoint {self.url} did not answer ({reason}); "
                             "is it still starting?") from None
        return list(answer.get("columns", [])), [tuple(row) for row in answer.get("rows", [])]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def running_worker(data_dir: Path) -> dict | None:
    """The contents of `<data_dir>/worker.json` if it names a live process, else None (stale or absent)."""
    try:
        marker = json.loads((Path(data_dir) / "worker.json").read_text())
        pid, port = int(marker["pid"]), int(marker["web_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker if pid > 0 and port > 0 and _pid_alive(pid) else None


def open_query_target(settings, admin: bool = False):
    """Where `tally query` runs SQL: the live worker's endpoint for embedded chDB, else ClickHouse
    directly. Read-only unless `admin`; it never creates or migrates anything."""
    from streams.store import clickhouse

    if settings.is_embedded_clickhouse:
        worker = running_worker(settings.data_dir)
        if worker is not None:
            return WorkerTarget(f"http://127.0.0.1:{int(worker['web_port'])}{WORKER_QUERY_PATH}", admin=admin)
        store = Path(settings.data_dir) / "clickhouse"
        if not store.is_dir():
            raise QueryError(f"no Tally data in {settings.data_dir} ({store} does not exist): check --data-dir "
                             f"(the demo's is .tally/demo; a worker's is its --data-dir, default .tally)")
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        client = clickhouse.connect(settings.clickhouse_dsn)
        client.query("SELECT 1")
    except (ClickHouseError, OSError) as exc:
        from clickhouse_connect.driver.exceptions import OperationalError
        reason = ("cannot connect; is the server up and the URL right (--clickhouse, env TALLY_CLICKHOUSE)?"
                  if isinstance(exc, OperationalError) else error_message(exc))
        raise QueryError(f"cannot open ClickHouse at {_without_password(settings.clickhouse_dsn)}: {reason}") from None
    return DirectTarget(client, admin=admin)


def _without_password(dsn: str) -> str:
    url = urlsplit(dsn)
    if url.password is None:
        return dsn
    return urlunsplit(url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@")))


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


# ---- command line ------------------------------------------------------------------------

def _parse_assignments(pairs: list[str] | None) -> dict[str, str]:
    assigned = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise QueryError(f"--param takes NAME=VALUE, not {pair!r}")
        assigned[name] = value
    return assigned


def _say(notes: list[str]) -> None:
    for note in notes:
        print(note, file=sys.stderr)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_query(args) -> int:
    from streams.cli import settings_from_args

    settings = settings_from_args(args)
    try:
        parameters = _parse_assignments(args.param)
        target = open_query_target(settings, admin=args.admin)
        parameters, notes = people.stored_ids(settings, target, parameters)
        _say(notes)
        columns, rows = target.query(args.sql, parameters or None)
    except (QueryError, people.LookupError_) as exc:
        return _fail(str(exc))
    print(FORMATTERS[args.format](columns, rows).rstrip("\n"))
    return 0


def _report_params(args) -> dict:
    names = {name for kpi in kpis.KPIS.values() for name in kpis.all_params(kpi)}
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def cmd_report(args) -> int:
    from streams.cli import settings_from_args

    if args.list:
        print(list_reports())
        return 0
    if not args.name:
        return _fail("name a report, e.g. `tally report dau`; `tally report --list` shows them")
    settings = settings_from_args(args)
    try:
        kpi = kpis.get_kpi(args.name)
        params = kpis.bind_params(kpi, _report_params(args))
        target = open_query_target(settings)
        stored, notes = people.stored_ids(settings, target, params, only={"user"})
        _say(notes)
        columns, rows = target.query(kpi.sql, stored)
    except (kpis.KpiError, QueryError, people.LookupError_) as exc:
        return _fail(str(exc))
    print(FORMATTERS[args.format](columns, rows).rstrip("\n"))
    if args.format == "table" and rows:
        print()
        print("\n".join(sparkline_lines(columns, rows, kpi.chart)))
    if not args.no_chart:
        stem = Path(args.chart) if args.chart else settings.data_dir / "reports" / kpi.name
        written = write_report_files(stem.with_suffix(""), kpi, stored, columns, rows)
        print("chart: " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args

    query = subparsers.add_parser("query", help="run SQL on the pipeline's ClickHouse and print the result")
    query.add_argument("sql", help='e.g. "SELECT ds, active_users FROM kpi_dau WHERE app = \'\'"')
    query.add_argument("--format", choices=sorted(FORMATTERS), default="table")
    query.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="a query parameter for {NAME:Type} in the SQL (repeatable)")
    query.add_argument("--admin", action="store_true",
                       help="let the SQL change data or tables (otherwise it runs read-only)")
    add_settings_args(query)
    query.set_defaults(func=cmd_query)

    report = subparsers.add_parser("report", help="run a named KPI: table, sparkline and a chart file")
    report.add_argument("name", nargs="?", help="the KPI; see --list")
    report.add_argument("--list", action="store_true", help="list the reports with one-line descriptions")
    report.add_argument("--format", choices=sorted(FORMATTERS), default="table")
    report.add_argument("--chart", help="chart file path (.html; a .png next to it if matplotlib is installed); "
                                        "default <data-dir>/reports/NAME.html")
    report.add_argument("--no-chart", action="store_true", help="don't write chart files")
    seen: dict[str, kpis.Param] = {}
    for kpi in kpis.KPIS.values():
        for name, param in kpis.all_params(kpi).items():
            seen.setdefault(name, param)
    for name, param in seen.items():
        report.add_argument(f"--{name}", help=param.help)
    add_settings_args(report)
    report.set_defaults(func=cmd_report)
