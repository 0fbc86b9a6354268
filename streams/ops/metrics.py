"""`tally metrics`: the current exact active users, as alerting and dashboards see them.

From the running worker's endpoint when there is one; otherwise from the compacted
`active-users` topic, which holds the latest value of every key (what a late-starting consumer
reads)."""
from __future__ import annotations

import asyncio
import json
import urllib.request

from streams.contract import MetricUpdate


def latest_updates(updates) -> list[dict]:
    """The newest MetricUpdate per (metric, app, day), as rows."""
    latest: dict[tuple[str, str, str], MetricUpdate] = {}
    for update in updates:
        key = (update.metric, update.app, update.day)
        if key not in latest or update.version >= latest[key].version:
            latest[key] = update
    return [{"metric": u.metric, "app": u.app, "day": u.day, "value": u.value, "version": u.version}
            for _, u in sorted(latest.items())]


async def read_metric_topic(bootstrap: str, topic: str) -> list[MetricUpdate]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [0])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        updates = []
        while True:
            positions = [await consumer.position(tp) for tp in partitions]
            if all(pos >= ends[tp] for pos, tp in zip(positions, partitions)):
                return updates
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                updates.extend(MetricUpdate.FromString(m.value) for m in batch if m.value)
    finally:
        await consumer.stop()


def select(rows: list[dict], metric: str | None, app: str | None, day: str | None, last: int | None) -> list[dict]:
    rows = [r for r in rows if (not metric or r["metric"] == metric) and (not app or r["app"] == app)
            and (not day or r["day"] == day)]
    if last:
        days = sorted({r["day"] for r in rows})[-last:]
        rows = [r for r in rows if r["day"] in days]
    return rows


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser("metrics", help="current exact DAU/WAU/MAU (from the worker or the metric topic)")
    add_settings_args(parser)
    parser.add_argument("--metric", choices=["dau", "wau", "mau", "calendar_wau"])
    parser.add_argument("--app", help="an app, or * for all apps together")
    parser.add_argument("--day", help="ISO date")
    parser.add_argument("--last", type=int, default=7, help="only the newest N days (default 7; 0 = all)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_cli_metrics)


def _cli_metrics(args) -> int:
    from streams.analyst.query import format_table, running_worker
    from streams.cli import settings_from_args
    settings = settings_from_args(args)
    worker = running_worker(settings.data_dir)
    if worker is not None:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker['web_port']}/active-users/", timeout=10) as response:
            rows = json.loads(response.read())
    else:
        rows = latest_updates(asyncio.run(read_metric_topic(settings.bootstrap, settings.topics.active_users)))
    rows = select(rows, args.metric, args.app, args.day, args.last)
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(["metric", "app", "day", "value"], [(r["metric"], r["app"], r["day"], r["value"]) for r in rows]))
    return 0
