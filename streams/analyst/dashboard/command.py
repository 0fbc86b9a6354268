"""`tally ui`: the dashboard on http://127.0.0.1:PORT/, over the data directory or a ClickHouse server.

While a worker owns the embedded chDB, queries go through the worker (as `tally query`'s do) and
the Overview shows its live totals; the worker serves the same dashboard at its own `/ui/`.
"""
from __future__ import annotations

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from streams.analyst.dashboard.server import Dashboard, parse_target, token_for, worker_json

DEFAULT_PORT = 6080


class _SerialTarget:
    """One query at a time: an embedded chDB session is not for concurrent queries."""

    def __init__(self, target) -> None:
        self._target, self._lock = target, threading.Lock()

    def query(self, sql, parameters=None):
        with self._lock:
            return self._target.query(sql, parameters)


def people_binder(settings, target):
    """Emails typed on the Users page, bound to their stored pseudonyms (as `tally report` does)."""
    from streams.analyst import people
    from streams.analyst.kpi_model import KpiError

    def bind(params: dict) -> tuple[dict, list[str]]:
        try:
            return people.stored_ids(settings, target, params, only={"user"})
        except people.LookupError_ as exc:
            raise KpiError(str(exc)) from None
    return bind


def open_dashboard(settings, token: str | None) -> Dashboard:
    from streams.analyst.query import WorkerTarget, open_query_target, running_worker

    target = open_query_target(settings)
    live = stats = None
    source = f"ClickHouse at {settings.clickhouse_dsn}" if not settings.is_embedded_clickhouse \
        else f"the data directory {settings.data_dir}"
    if isinstance(target, WorkerTarget):
        worker = running_worker(settings.data_dir)
        base = f"http://127.0.0.1:{int(worker['web_port'])}"
        live = lambda: worker_json(f"{base}/active-users/") or []  # noqa: E731
        stats = lambda: worker_json(f"{base}/stats/") or {}  # noqa: E731
        source = f"the worker on {base} (it owns {settings.data_dir})"
    else:
        target = _SerialTarget(target)
    return Dashboard(target, token=token, live=live, stats=stats, bind_people=people_binder(settings, target),
                     source=source)


def make_server(dashboard: Dashboard, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            path, query = parse_target(self.path)
            response = dashboard.respond(method, path, query, dict(self.headers))
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(response.body)

        def do_GET(self):  # noqa: N802 (the standard library's names)
            self._answer("GET")

        def do_HEAD(self):  # noqa: N802
            self._answer("HEAD")

        def do_POST(self):  # noqa: N802
            self._answer("POST")

        def do_PUT(self):  # noqa: N802
            self._answer("PUT")

        def do_DELETE(self):  # noqa: N802
            self._answer("DELETE")

        def log_message(self, *args) -> None:  # one line per request is noise for a person at a terminal
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(settings, host: str, port: int, announce: str = "dashboard") -> int:
    """Serve until Ctrl-C. Exit 2 with one line when it cannot start."""
    from streams.analyst.query import QueryError

    try:
        token = token_for(host, os.environ)
        dashboard = open_dashboard(settings, token)
        server = make_server(dashboard, host, port)
    except (ValueError, QueryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port} ({exc.strerror or exc}); is another dashboard running? "
              f"Choose another with --port", file=sys.stderr)
        return 2
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"{announce}: http://{shown_host}:{server.server_address[1]}/  (data: {dashboard.source}; Ctrl-C to stop)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_ui(args) -> int:
    from streams.cli import settings_from_args
    return serve(settings_from_args(args), args.host, args.port)


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args

    ui = subparsers.add_parser("ui", help="serve the usage dashboard in the browser (read-only)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to bind; beyond 127.0.0.1 it needs TALLY_UI_TOKEN (default 127.0.0.1)")
    add_settings_args(ui)
    ui.set_defaults(func=cmd_ui)
