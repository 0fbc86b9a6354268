"""The naive peer: the Faust agent most tutorials show. One event at a time, one ClickHouse insert each.

    python -m bench.naive_peer --bootstrap B --topic T --app-id A --data-dir D --events N --result FILE [--floor]

With --floor it is instead the Faust floor: `take_events` batches, decode only, nothing stored:
what Faust's own per-message machinery costs, the fastest any Faust agent design can go.

It reads the same Protobuf messages as Tally, decodes each, and inserts it on its own into a chDB
table in its own data directory. After N events it writes what it measured (events, seconds and
CPU seconds from the 10% mark to the N-th event) to FILE; the harness then stops it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import faust

from streams.store import clickhouse
from bench.harness import decode_actions

COLUMNS = ["event_id", "app", "command", "user", "ts", "duration_ms", "properties"]
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS naive_actions
(event_id String, app String, command String, user String, ts DateTime64(3, 'UTC'), duration_ms Int64,
 properties Map(String, String))
ENGINE = MergeTree ORDER BY (app, ts)"""


def build_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(args.app_id, broker=f"kafka://{args.bootstrap}", store="memory://",
                    datadir=str(Path(args.data_dir) / "faust"), consumer_auto_offset_reset="earliest",
                    web_enabled=False, logging_config=None, stream_buffer_maxsize=40_000,
                    broker_max_poll_records=10_000, consumer_max_fetch_size=16 * 1024 * 1024)
    topic = app.topic(args.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    client = None if args.floor else clickhouse.connect(f"chdb://{Path(args.data_dir).resolve() / 'clickhouse'}")
    if client is not None:
        client.command(CREATE_TABLE)
    warm_up = max(1, args.events // 10)
    marks: dict[str, float] = {}

    def mark(count: int) -> None:
        if count >= warm_up and "wall" not in marks:
            marks["wall"], marks["cpu"], marks["at"] = time.monotonic(), time.process_time(), count
        if count >= args.events and "done" not in marks:
            marks["done"] = count
            Path(args.result).write_text(json.dumps({
                "events": count - marks["at"], "seconds": time.monotonic() - marks["wall"],
                "cpu_seconds": time.process_time() - marks["cpu"]}))

    if args.floor:
        @app.agent(topic)
        async def decode_only(stream):
            count = 0
            # batches of at most 20k, like the worker, but at least ~20 of them so the warm-up mark lands
            async for events in stream.take_events(max(100, min(20_000, args.events // 20)), within=1.0):
                for event in events:
                    count += len(decode_actions(event.message.value, event.message.headers))
                    mark(count)
        return app

    @app.agent(topic)
    async def store_each(stream):
        count = 0
        try:
            async for event in stream.events():
                for action in decode_actions(event.message.value, event.message.headers):
                    ts = dt.datetime.fromtimestamp(action.start_epoch_ms / 1000, dt.timezone.utc)
                    client.insert("naive_actions", [[action.event_id, action.app, action.command, action.user, ts,
                                                     action.end_epoch_ms - action.start_epoch_ms,
                                                     dict(action.properties)]], column_names=COLUMNS)
                    count += 1
                    mark(count)
        except Exception as exc:  # a crashed agent leaves the worker running: tell the harness
            Path(args.result).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            raise

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_peer", description=__doc__.splitlines()[0])
    for flag in ("--bootstrap", "--topic", "--app-id", "--data-dir", "--result"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--floor", action="store_true", help="take_events + decode only, no inserts")
    args = parser.parse_args(argv)
    app = build_app(args)
    faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
