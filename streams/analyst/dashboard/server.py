"""The dashboard over HTTP: one `Dashboard.respond` behind both `tally ui` and the worker's `/ui/`.

    GET  ./                 the page shell (static/index.html); the view's state is in the URL
    GET  ./static/NAME      its script and style, and Plotly.js from the installed `plotly` package
    GET  ./api/meta         the pages and the values the filters take
    GET  ./api/page?page=overview&since=...&app=...   one page's panels as JSON

Nothing here takes SQL: a request names a page and its filters, the KPIs' SQL is fixed and the
values are bound server-side, read-only. Bound beyond 127.0.0.1 a token is required
(TALLY_UI_TOKEN): as `Authorization: Bearer ...`, a `tally_token` cookie, or `?token=` once,
which sets the cookie.
"""
from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

from streams.analyst import charts
from streams.analyst.dashboard import pages
from streams.analyst.kpi_model import KpiError

STATIC = Path(__file__).parent / "static"
TOKEN_ENV = "TALLY_UI_TOKEN"
TOKEN_COOKIE = "tally_token"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png"}


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, answer: dict, headers: dict | None = None) -> Response:
    return Response(status, "application/json", pages.dumps(answer), headers or {})


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(host: str, environ: dict) -> str | None:
    """The token requests must carry when bound to `host`: None on loopback; else TALLY_UI_TOKEN,
    and ValueError (one line: what to do) when it is not set."""
    if is_loopback(host):
        return None
    token = environ.get(TOKEN_ENV, "")
    if not token:
        raise ValueError(f"bound to {host}, beyond this machine: set {TOKEN_ENV} to a secret that requests "
                         f"must carry, or bind to 127.0.0.1")
    return token


def request_token(query: dict[str, str], headers: dict[str, str]) -> str:
    """The token a request carries, by header, cookie or query string."""
    lowered = {k.lower(): v for k, v in headers.items()}
    auth = lowered.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if "token" in query:
        return query["token"]
    cookie = SimpleCookie(lowered.get("cookie", ""))
    return cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else ""


class Dashboard:
    """Pages over a query target (DirectTarget or WorkerTarget, both read-only).

    `live()` gives the worker's exact totals and `stats()` its counters when a worker is there
    (the Overview and Pipeline pages show them); `bind_people(params)` turns an email typed in the
    Users page into its stored pseudonym."""

    def __init__(self, target, token: str | None = None, live=None, stats=None, bind_people=None,
                 source: str = "") -> None:
        self.target, self.token = target, token
        self.live, self.stats, self.bind_people = live, stats, bind_people
        self.source = source

    def respond(self, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> Response:
        """`path` is relative to where the dashboard is mounted ('' for its shell)."""
        extra = {}
        if self.token is not None:
            given = request_token(query, headers)
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return Response(401, "text/plain; charset=utf-8",
                                b"this dashboard needs its token: open it with ?token=... (the TALLY_UI_TOKEN it "
                                b"was started with)\n")
            if "token" in query:
                extra["Set-Cookie"] = f"{TOKEN_COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "the dashboard only reads: use GET"}, {"Allow": "GET, HEAD"})
        path = path.strip("/")
        if path in ("", "index.html"):
            return Response(200, CONTENT_TYPES[".html"], (STATIC / "index.html").read_bytes(), extra)
        if path.startswith("static/"):
            return self._static(path[len("static/"):])
        try:
            if path == "api/meta":
                return _json(200, {**pages.meta(self.target), "source": self.source,
                                   "live": self.live is not None}, extra)
            if path == "api/page":
                return _json(200, self.page(query), extra)
        except KpiError as exc:
            return _json(400, {"error": str(exc)})
        except Exception as exc:  # a query the store refused or could not run: one line, no traceback
            from streams.analyst.query import QueryError, error_message
            return _json(503 if not isinstance(exc, QueryError) else 400, {"error": error_message(exc)})
        return _json(404, {"error": f"no such page: /{path}"})

    def page(self, query: dict[str, str]) -> dict:
        today = dt.datetime.now(dt.timezone.utc).date()
        answer = pages.build_page(self.target, query.get("page", "overview"), query, today, self.bind_people)
        if answer["page"] == "overview" and self.live is not None:
            answer["live"] = live_tiles(self.live(), answer["filters"]["app"])
        if answer["page"] == "pipeline" and self.stats is not None:
            answer["worker"] = worker_tiles(self.stats())
        return answer

    def _static(self, name: str) -> Response:
        if name == "plotly.min.js":
            path = charts.plotly_js_path()
        else:
            path = STATIC / name
            if path.resolve().parent != STATIC.resolve() or not path.is_file():
                return _json(404, {"error": f"no static file {name!r}"})
        return Response(200, CONTENT_TYPES.get(path.suffix, "application/octet-stream"), path.read_bytes(),
                        {"Cache-Control": "max-age=3600"})


def live_tiles(rows: list[dict], app: str) -> list[dict]:
    """The worker's exact DAU/WAU/MAU on the stream's current day, for one app or all ('*')."""
    wanted = app or "*"
    mine = [row for row in rows if row["app"] == wanted and row["metric"] in ("dau", "wau", "mau")]
    if not mine:
        return []
    day = max(row["day"] for row in mine)
    values = {row["metric"]: row["value"] for row in mine if row["day"] == day}
    return [{"id": f"live_{m}", "label": f"live {m.upper()}", "value": values.get(m, 0),
             "note": f"{'all apps' if wanted == '*' else wanted}, {day}, from the worker's tables"}
            for m in ("dau", "wau", "mau")]


def worker_tiles(stats: dict) -> list[dict]:
    lag = sum((stats.get("consumer_lag") or {}).values())
    sink = stats.get("sink", {})
    rate = sink.get("rows", 0) / sink["insert_seconds"] if sink.get("insert_seconds") else 0
    return [{"id": "consumed", "label": "consumed", "value": stats.get("consumed", 0), "note": "messages in"},
            {"id": "delivered", "label": "stored", "value": stats.get("delivered", 0), "note": "events to ClickHouse"},
            {"id": "dead_lettered", "label": "dead letters", "value": stats.get("dead_lettered", 0),
             "note": ", ".join(f"{k}: {v}" for k, v in sorted(stats.get("dead_letters_by_reason", {}).items()))},
            {"id": "duplicates", "label": "duplicates", "value": stats.get("duplicates", 0), "note": "dropped"},
            {"id": "lag", "label": "lag", "value": lag, "note": "messages behind, all partitions"},
            {"id": "insert_rate", "label": "insert rate", "value": round(rate), "note": "rows per insert-second"}]


def parse_target(raw_path: str) -> tuple[str, dict[str, str]]:
    """(path, query) of a request line's target; repeated parameters keep the last value."""
    parts = urllib.parse.urlsplit(raw_path)
    return urllib.parse.unquote(parts.path), dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))


def worker_json(url: str, timeout: float = 10.0):
    """GET a worker endpoint's JSON (its live totals, its stats); None if it does not answer."""
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError):
        return None
