"""Tools for analysts: `tally query "SQL"` and `tally report NAME`, wherever the data lives.

With embedded chDB only one process can own the data directory. While a worker runs (it writes
`<data_dir>/worker.json`), queries go to the worker's HTTP endpoint; otherwise this process opens
ClickHouse itself. `open_query_target` makes that choice, so the user never has to.
"""
from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from streams.analyst import kpis, people
from streams.analyst.output import FORMATTERS, list_reports, sparkline_lines, write_report_files

WORKER_QUERY_PATH = "/query/"     # served by streams/runtime/web.py
WORKER_TIMEOUT_SECONDS = 600      # analyst queries may scan a lot; the worker answers when done


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
        if settings.is_embedded_clickhouse and "EmbeddedServer" in str(exc):  # another process holds the lock
            raise QueryError(f"another process has {settings.data_dir} open (embedded ClickHouse lets one process "
                             f"own a data directory): stop it (a `tally ui`, `tally bench --dashboard` or another "
                             f"command on this directory) and run this again") from None
        raise QueryError(f"cannot open ClickHouse at {clickhouse.redact(settings.clickhouse_dsn)}: {reason}") from None
    return DirectTarget(client, admin=admin)


# ---- command line ------------------------------------------------------------------------

def _parse_assignments(pairs: list[str] | None) -> dict[str, str]:
    assigned = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise QueryError(f"--param takes NAME=VALUE, not {pair!r}")
        assigned[name] = value
    return assigned


def why_empty(target, params: dict) -> list[str]:
    """A hint when a report answers nothing because a filter matches nothing (a mistyped app)."""
    app = params.get("app")
    if not app:
        return []
    try:
        known = [row[0] for row in target.query("SELECT DISTINCT app FROM user_actions ORDER BY app")[1]]
    except QueryError:
        return []
    if app in known:
        return []
    import difflib
    near = difflib.get_close_matches(app, known, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return [f"note: no events of app {app!r}{hint} Apps in the store: {', '.join(known) or 'none yet'}"]


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
    if not rows:
        _say(why_empty(target, stored))
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
