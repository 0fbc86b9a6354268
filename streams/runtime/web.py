"""The worker's HTTP endpoint (Faust's web server, on 127.0.0.1:web_port).

    GET  /active-users?metric=&app=   current exact totals, JSON (for `tally metrics`, dashboards)
    GET  /stats                       pipeline counters, JSON (with the readiness below)
    GET  /healthz  /readyz            alive; ready (consuming, ClickHouse writable, Kafka answering, not stalled)
    GET  /metrics                     the same as Prometheus text
    POST /query  {"sql", "parameters"}  runs SQL on this worker's ClickHouse (chDB has one owner)
    GET  /ui/                         the dashboard (streams/analyst/dashboard), over this worker's data

Bound beyond 127.0.0.1, /query/ and /ui/ want the TALLY_UI_TOKEN the worker was started with
(and are refused when it has none); the counters stay open for probes and scrapes.
"""
from __future__ import annotations

import asyncio
import json
import os

from faust.web import View

from streams.analyst.dashboard.server import token_for


async def consumer_lag(pipeline) -> dict[int, int]:
    """Messages not yet processed per assigned input partition. A partition with nothing processed
    since this worker took it counts from where its consumer stands (the committed offset, or
    further once fetched), not from zero: a caught-up partition has lag 0 after a restart."""
    lag = {}
    consumer = pipeline.app.consumer
    for tp in consumer.assignment():
        if tp.topic != pipeline.settings.topics.user_actions:
            continue
        try:
            high = consumer.highwater(tp)
            processed = pipeline.consumed_offsets.get(tp.partition)
            done = processed + 1 if processed is not None else (await consumer.position(tp) or 0)
        except Exception:  # not fetched yet, or the partition is being revoked
            continue
        lag[tp.partition] = max(0, (high or 0) - done)
    return lag


async def _stats(pipeline) -> dict:
    counts = pipeline.counts
    sink = pipeline.writer.stats
    stages = pipeline.stage_times
    lag = await consumer_lag(pipeline)
    return {
        "consumed": counts.consumed, "delivered": counts.delivered, "dead_lettered": counts.dead_lettered,
        "duplicates": counts.duplicates, "rerouted": counts.rerouted,
        "late": counts.late, "historical": counts.historical,  # of the delivered: behind their partition
        "dead_letters_by_reason": dict(counts.dead_letters_by_reason),
        "stages": {"events": stages.events, "cpu_seconds": round(stages.cpu_seconds, 3),
                   "seconds": round(stages.seconds, 3)},
        "sink": {"inserts": sink.inserts, "rows": sink.rows, "insert_seconds": round(sink.insert_seconds, 3),
                 "insert_cpu_seconds": round(sink.insert_cpu_seconds, 3),
                 "last_batch_rows": sink.last_batch_rows, "max_batch_rows": sink.max_batch_rows,
                 "failed_inserts": sink.failed_inserts},
        "consumer_lag": lag, "metric_updates": pipeline.metrics_emitted,
        "offset_holes": dict(pipeline.offset_holes),
        "alerts_firing": pipeline.alerts.state(),
        "health": await _readiness(pipeline, lag),
    }


async def _readiness(pipeline, lag: dict | None = None) -> dict:
    from streams.runtime.health import readiness
    lag = await consumer_lag(pipeline) if lag is None else lag
    return readiness(len(lag), sum(lag.values()), pipeline.activity.last_step, pipeline.writer.stats,
                     pipeline.kafka_answers)


def prometheus_text(stats: dict) -> str:
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP tally_{name} {help_text}")
        lines.append(f"# TYPE tally_{name} {kind}")
        lines.extend(f"tally_{name}{labels} {value}" for labels, value in samples)

    for stage in ("consumed", "delivered", "dead_lettered", "duplicates", "rerouted"):
        metric(f"events_{stage}_total", "counter", f"events {stage.replace('_', ' ')}", [("", stats[stage])])
    metric("events_delivered_late_total", "counter", "events delivered behind their partition's newest, by how far",
           [('{lateness="late"}', stats["late"]), ('{lateness="historical"}', stats["historical"])])
    metric("dead_letters_total", "counter", "dead letters by reason",
           [(f'{{reason="{r}"}}', n) for r, n in sorted(stats["dead_letters_by_reason"].items())])
    stages = stats["stages"]
    metric("stage_events_total", "counter", "events through the stages", [("", stages["events"])])
    metric("stage_cpu_seconds_total", "counter", "CPU time in the stages (event loop thread)",
           [("", stages["cpu_seconds"])])
    metric("stage_seconds_total", "counter", "wall time in the stages", [("", stages["seconds"])])
    sink = stats["sink"]
    metric("sink_inserts_total", "counter", "ClickHouse inserts", [("", sink["inserts"])])
    metric("sink_rows_total", "counter", "rows inserted", [("", sink["rows"])])
    metric("sink_insert_seconds_total", "counter", "time spent inserting", [("", sink["insert_seconds"])])
    metric("sink_insert_cpu_seconds_total", "counter", "CPU time of the inserting thread",
           [("", sink["insert_cpu_seconds"])])
    metric("sink_last_batch_rows", "gauge", "rows in the last insert", [("", sink["last_batch_rows"])])
    metric("sink_failed_inserts_total", "counter", "inserts ClickHouse did not take (retried, or halved to find "
           "refused rows)", [("", sink["failed_inserts"])])
    metric("consumer_lag", "gauge", "messages not yet processed per input partition",
           [(f'{{partition="{p}"}}', n) for p, n in sorted(stats["consumer_lag"].items())])
    metric("metric_updates_total", "counter", "MetricUpdate messages published", [("", stats["metric_updates"])])
    metric("offset_holes_total", "counter", "offset jumps: re-read (a message the consumer dropped) or passed "
           "(no record at the broker)", [(f'{{outcome="{o}"}}', n) for o, n in sorted(stats["offset_holes"].items())])
    return "\n".join(lines) + "\n"


def register(app, pipeline) -> None:
    @app.page("/active-users/")
    class ActiveUsers(View):
        async def get(self, request):
            query = request.query
            return self.json(pipeline.current_totals(query.get("metric"), query.get("app")))

    @app.page("/stats/")
    class Stats(View):
        async def get(self, request):
            return self.json(await _stats(pipeline))

    @app.page("/healthz/")
    class Alive(View):
        async def get(self, request):
            return self.json({"alive": True})

    @app.page("/readyz/")
    class Ready(View):
        async def get(self, request):
            answer = await _readiness(pipeline)
            return self.json(answer, status=200 if answer["ready"] else 503)

    @app.page("/metrics/")
    class Metrics(View):
        async def get(self, request):
            return self.bytes(prometheus_text(await _stats(pipeline)).encode(),
                              content_type="text/plain; version=0.0.4")

    try:
        token = token_for(pipeline.settings.web_bind, os.environ)
    except ValueError:
        token = _NO_TOKEN

    @app.page("/query/")
    class Query(View):
        async def post(self, request):
            from streams.analyst.query import handle_query_request
            refused = _refused(self, request, token)
            if refused is not None:
                return refused
            body = json.loads(await request.text() or "{}")
            status, answer = await asyncio.get_running_loop().run_in_executor(
                None, handle_query_request, _LockedClient(pipeline.writer), body, pipeline.settings.admin_sql)
            return self.bytes(json.dumps(answer, default=str).encode(), status=status,
                              content_type="application/json")


    async def dashboard(view, request, path: str):
        if token is _NO_TOKEN:
            return _refused(view, request, token)
        from streams.analyst.dashboard.command import people_binder
        from streams.analyst.dashboard.server import Dashboard, parse_target
        from streams.analyst.query import DirectTarget
        _, query = parse_target(str(request.rel_url))
        live, stats = [], {}
        if path.strip("/") == "api/page":  # taken here, on the loop that owns them; only what the page shows
            page = query.get("page", "overview")
            live = pipeline.current_totals() if page == "overview" else []
            stats = await _stats(pipeline) if page == "pipeline" else {}
        target = DirectTarget(_LockedClient(pipeline.writer))
        board = Dashboard(target, token=token, live=lambda: live, stats=lambda: stats,  # it checks the token
                          bind_people=people_binder(pipeline.settings, target),
                          source=f"this worker ({pipeline.settings.data_dir})")
        answer = await asyncio.get_running_loop().run_in_executor(
            None, board.respond, request.method, path, query, dict(request.headers))
        return view.bytes(answer.body, status=answer.status, content_type=answer.content_type.split(";")[0],
                          headers=answer.headers)

    @app.page("/ui/")
    class DashboardShell(View):
        async def get(self, request):
            return await dashboard(self, request, "")

    @app.page("/ui/{path:.+}")
    class DashboardPart(View):
        async def get(self, request, path):
            return await dashboard(self, request, path)


_NO_TOKEN = object()  # bound beyond this machine with no TALLY_UI_TOKEN: nothing gets in


def _refused(view, request, token):
    """None when the request may pass; else the 401/403 answer, one line."""
    from streams.analyst.dashboard.server import TOKEN_ENV, request_token
    if token is None:
        return None
    if token is _NO_TOKEN:
        return view.bytes(f"refused: this worker listens beyond 127.0.0.1 without {TOKEN_ENV}; start it with "
                          f"{TOKEN_ENV} set to use /query/ and /ui/ from here\n".encode(), status=403,
                          content_type="text/plain")
    from streams.analyst.dashboard.server import parse_target
    _, query = parse_target(str(request.rel_url))
    if request_token(query, dict(request.headers)) != token:
        return view.bytes(f"this endpoint needs the worker's {TOKEN_ENV}: send it as 'Authorization: Bearer ...' "
                          f"or ?token=...\n".encode(), status=401, content_type="text/plain")
    return None


class _LockedClient:
    """The writer's client behind its lock, so queries never interleave with inserts on chDB."""

    def __init__(self, writer) -> None:
        self._writer = writer

    def query(self, sql, parameters=None, **kwargs):
        with self._writer.lock:
            return self._writer.client.query(sql, parameters=parameters, **kwargs)

    def __getattr__(self, name):
        return getattr(self._writer.client, name)
