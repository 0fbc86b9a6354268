"""`tally metrics`: the current exact active users, as alerting and dashboards see them.

From the running worker's endpoint when there is one; otherwise from the compacted
`active-users` topic, which holds the latest value of every key (what a late-starting consumer
reads)."""
from __future__ import annotations

import asyncio
import json
import urllib.request

from aiokafka.errors import KafkaError

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
    try:
        await consumer.start()
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


def as_of(rows: list[dict]) -> tuple[str, list[list]]:
    """The default view: per app (and `*`, all apps), DAU/WAU/MAU on the stream's current day (its
    newest DAU's, in progress) and on the last complete day before it."""
    days = sorted({r["day"] for r in rows if r["metric"] == "dau"})
    if not days:
        return "no active users published yet", []
    current = days[-1]
    complete = days[-2] if len(days) > 1 else None
    value = {(r["metric"], r["app"], r["day"]): r["value"] for r in rows}
    apps = sorted({r["app"] for r in rows if r["day"] in (current, complete)}, key=lambda a: (a != "*", a))
    table = []
    for app in apps:
        for day in filter(None, (current, complete)):
            table.append([app, day, *(value.get((metric, app, day), 0) for metric in ("dau", "wau", "mau"))])
    title = f"active users on {current} (the stream's current day, in progress)"
    if complete:
        title += f" and {complete} (the last complete day)"
    return title + "; app * = all apps", table


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser(
        "metrics", help="current exact DAU/WAU/MAU (from the worker or the metric topic)",
        description="With no filter, DAU/WAU/MAU per app on the stream's current day and the last complete day.")
    add_settings_args(parser)
    parser.add_argument("--metric", choices=["dau", "wau", "mau", "calendar_wau"])
    parser.add_argument("--app", help="an app, or * for all apps together")
    parser.add_argument("--day", help="ISO date")
    parser.add_argument("--last", type=int, help="only the newest N days (0 = all; default 7 when listing)")
    parser.add_argument("--json", action="store_true", help="every value as JSON rows (newest 7 days unless --last)")
    parser.set_defaults(func=_cli_metrics)


def _cli_metrics(args) -> int:
    import sys

    from streams.analyst.output import format_table
    from streams.analyst.query import running_worker
    from streams.cli import settings_from_args
    settings = settings_from_args(args)
    worker = running_worker(settings.data_dir)
    try:
        if worker is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker['web_port']}/active-users/", timeout=10) as response:
                rows = json.loads(response.read())
        else:
            rows = latest_updates(asyncio.run(read_metric_topic(settings.bootstrap, settings.topics.active_users)))
    except (OSError, KafkaError) as exc:
        source = "the worker's endpoint" if worker is not None else f"Kafka at {settings.bootstrap}"
        print(f"error: cannot read the active users from {source} ({type(exc).__name__}); start the broker "
              f"(`tally broker start`) or the worker, or pass --bootstrap", file=sys.stderr)
        return 2
    listing = args.json or any(value is not None for value in (args.metric, args.app, args.day, args.last))
    if not listing:
        title, table = as_of(rows)
        print(title)
        if table:
            print(format_table(["app", "day", "dau", "wau", "mau"], table))
        return 0
    rows = select(rows, args.metric, args.app, args.day, 7 if args.last is None else args.last)
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(["metric", "app", "day", "value"], [(r["metric"], r["app"], r["day"], r["value"]) for r in rows]))
    return 0
