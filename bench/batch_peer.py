"""The batch peer: what a Python team would write instead of Tally with the same libraries, no stages.

    python -m bench.batch_peer --bootstrap B --topic T --app-id A --data-dir D --events N --result FILE

An aiokafka consumer takes the topic with `getmany`, decodes each message (and envelope) into
UserActions, keeps 15 of their columns as Python lists, and every 20k rows inserts them into the
same `user_actions` table as Tally's (the project's migrations, embedded chDB) with
clickhouse-connect's column-oriented insert, committing offsets after each insert. No validation,
enrichment, scrubbing, dedup or active users: what moving the bytes costs, for the bench table to
set the stages beside. After N events it writes events, seconds and CPU seconds from the 10% mark
to FILE, as the naive peer does.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from pathlib import Path

from bench.harness import decode_actions

COLUMNS = ("event_id", "app", "command", "user", "ts", "ds", "start_epoch_ms", "end_epoch_ms", "duration_ms",
           "host_name", "keyword_args_json", "error", "properties", "kafka_partition", "kafka_offset")
INSERT_ROWS = 20_000
EPOCH = dt.date(1970, 1, 1)


def append_action(columns: list[list], action, partition: int, offset: int) -> None:
    start = action.start_epoch_ms
    values = (action.event_id, action.app, action.command, action.user,
              dt.datetime.fromtimestamp(start / 1000, dt.timezone.utc), EPOCH + dt.timedelta(days=start // 86_400_000),
              start, action.end_epoch_ms, action.end_epoch_ms - start, action.host_name, action.keyword_args_json,
              action.error, dict(action.properties), partition, offset)
    for column, value in zip(columns, values):
        column.append(value)


async def run(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer

    from streams.store import clickhouse
    client = clickhouse.connect(f"chdb://{Path(args.data_dir).resolve() / 'clickhouse'}")
    clickhouse.migrate(client)
    consumer = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.app_id,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_poll_records=min(10_000, max(100, args.events // 20)),
                                fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    insert_rows = max(100, min(INSERT_ROWS, args.events // 20))  # a short run still has ~20 inserts
    warm_up, count, inserts, marks = max(1, args.events // 10), 0, 0, {}
    columns: list[list] = [[] for _ in COLUMNS]
    try:
        while count < args.events:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    for action in decode_actions(record.value, record.headers):
                        append_action(columns, action, tp.partition, record.offset)
            # inserts of insert_rows each, however much one getmany brought
            while len(columns[0]) >= insert_rows or (columns[0] and count + len(columns[0]) >= args.events):
                chunk = [column[:insert_rows] for column in columns]
                columns = [column[insert_rows:] for column in columns]
                client.insert("user_actions", data=chunk, column_names=list(COLUMNS), column_oriented=True)
                count += len(chunk[0])
                inserts += 1
                if count >= warm_up and "wall" not in marks:
                    marks.update(wall=time.monotonic(), cpu=time.process_time(), at=count)
            if not columns[0]:  # every row taken so far is stored: commit
                await consumer.commit()
    finally:
        await consumer.stop()
    Path(args.result).write_text(json.dumps({"events": count - marks["at"], "seconds": time.monotonic() - marks["wall"],
                                             "cpu_seconds": time.process_time() - marks["cpu"],
                                             "inserts": inserts}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_peer", description=__doc__.splitlines()[0])
    for flag in ("--bootstrap", "--topic", "--app-id", "--data-dir", "--result"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
