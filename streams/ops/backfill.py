"""`tally publish FILE`: send JSON lines (a tool's history, or live events from a shell) and say
what became of them.

The events are packed into envelopes per partition (what the SDK sends), with progress on
stderr. Then, when a worker of the consumer group runs, it waits until the worker has committed
past the last offset written and reports, from the store, how many events were stored, dropped as
duplicates and dead-lettered (by reason).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import TextIO

from streams.producer.publish import Published, publish_lines

PROGRESS_EVERY_S = {True: 0.5, False: 10.0}  # on a terminal (rewritten in place), in a log


class Progress:
    """`sent N events  R events/s  ETA m:ss  (P% of FILE)` on stderr, at most every so often."""

    def __init__(self, total_chars: int | None, out: TextIO = sys.stderr, clock=time.monotonic) -> None:
        self.total, self.out, self.clock = total_chars, out, clock
        self.terminal = out.isatty()
        self.started = self.shown = clock()
        self.line = ""

    def __call__(self, events: int, chars_read: int) -> None:
        now = self.clock()
        if now - self.shown < PROGRESS_EVERY_S[self.terminal]:
            return
        self.shown = now
        rate = events / max(now - self.started, 1e-9)
        self.line = f"sent {events:,} events  {rate:,.0f} events/s"
        if self.total and chars_read:
            share = min(chars_read / self.total, 1.0)
            left = (now - self.started) * (1 - share) / max(share, 1e-9)
            self.line += f"  ETA {int(left // 60)}:{int(left % 60):02d}  ({share:.0%} of the file)"
        self.out.write(("\r" + self.line + "\x1b[K") if self.terminal else self.line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.terminal and self.line:
            self.out.write("\n")


async def wait_until_taken(bootstrap: str, group: str, topic: str, written: dict[int, tuple[int, int]],
                           patience_s: float = 60.0, poll_s: float = 1.0, joining_s: float = 5.0) -> str:
    """'taken' once the group has committed past every offset written; 'no worker' when the group
    has no member; 'stalled' when its commits don't move for `patience_s`."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if not await _has_members(admin, group, joining_s):
            return "no worker"
        last_seen, moved = None, time.monotonic()
        while True:
            committed = await _retrying(lambda: admin.list_consumer_group_offsets(group))
            done = {p: committed[TopicPartition(topic, p)].offset if TopicPartition(topic, p) in committed else -1
                    for p in written}
            if all(done[p] > last for p, (_, last) in written.items()):
                return "taken"
            if done != last_seen:
                last_seen, moved = done, time.monotonic()
            elif time.monotonic() - moved > patience_s:
                return "stalled"
            await asyncio.sleep(poll_s)
    finally:
        await admin.close()


async def _has_members(admin, group: str, joining_s: float) -> bool:
    """Whether the group has a member, allowing `joining_s` for a worker that has just started."""
    deadline = time.monotonic() + joining_s
    while True:
        described = await _retrying(lambda: admin.describe_consumer_groups([group]))
        # DescribeGroups responses: groups as (error_code, group, state, protocol_type, protocol, members)
        if any(entry[5] for response in described for entry in response.groups if entry[1] == group):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.5)


async def _retrying(call, attempts: int = 30, wait_s: float = 1.0):
    """`call()` again while the broker answers with a retriable error (a group coordinator that is
    still being elected, a topic whose leader moves)."""
    from aiokafka.errors import KafkaError
    for attempt in range(attempts):
        try:
            return await call()
        except KafkaError as exc:
            if not exc.retriable or attempt == attempts - 1:
                raise
            await asyncio.sleep(wait_s)


def outcome_sql(topic: str, written: dict[int, tuple[int, int]]) -> tuple[str, str]:
    """Queries for what the worker made of the offsets written: distinct events stored from them,
    and their dead letters by reason. Offsets are integers from the broker, never user text."""
    def ranges(partition_column: str, offset_column: str) -> str:
        return " OR ".join(f"({partition_column} = {int(p)} AND {offset_column} BETWEEN {int(a)} AND {int(b)})"
                           for p, (a, b) in sorted(written.items()))
    stored = f"SELECT count(DISTINCT event_id) FROM user_actions WHERE {ranges('kafka_partition', 'kafka_offset')}"
    letters = (f"SELECT reason, count() FROM dead_letters FINAL WHERE source_topic = {{topic:String}} "
               f"AND ({ranges('source_partition', 'source_offset')}) GROUP BY reason ORDER BY count() DESC, reason")
    return stored, letters


def report_outcome(settings, topic: str, published: Published) -> list[str]:
    from streams.analyst.query import QueryError, open_query_target

    stored_sql, letters_sql = outcome_sql(topic, published.offsets)
    try:
        target = open_query_target(settings)
        stored = target.query(stored_sql)[1][0][0]
        letters = target.query(letters_sql, {"topic": topic})[1]
    except QueryError as exc:
        return [f"taken by the worker, but the store could not be read: {exc}"]
    dead = sum(n for _, n in letters)
    lines = [f"taken by the worker: stored {stored}, duplicates {published.events - stored - dead}, "
             f"dead-lettered {dead}"]
    lines += [f"  dead letters {reason}: {n}  (tally dlq inspect --reason {reason})" for reason, n in letters]
    return lines


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser(
        "publish", help="publish JSON lines (one UserAction per line) to Kafka and report what was stored",
        description="Read JSON lines (UserAction field names; 'properties' an object; integer timestamps) "
                    "from FILE or stdin and publish them as Protobuf, packed in envelopes per partition. Bad "
                    "lines are reported as 'line N: reason' on stderr and skipped; exit code 1 if any were "
                    "rejected. With a worker running, waits until it has taken the events and reports "
                    "what was stored, deduplicated and dead-lettered.")
    parser.add_argument("file", nargs="?", default="-", help="JSON lines file, or - for stdin (default)")
    parser.add_argument("--topic", help="default: the user-actions topic")
    parser.add_argument("--app", help="app for lines that don't name one")
    parser.add_argument("--app-id", help="the worker's consumer group to wait for (default tally)")
    parser.add_argument("--single", action="store_true", help="one Kafka message per event instead of envelopes")
    parser.add_argument("--no-wait", action="store_true", help="don't wait for the worker's report")
    add_settings_args(parser)
    parser.set_defaults(func=_cli_publish)


def _cli_publish(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from streams.cli import settings_from_args
    settings = settings_from_args(args, app_id=args.app_id)
    topic = args.topic or settings.topics.user_actions
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}; give a JSON-lines file, or - for standard input",
              file=sys.stderr)
        return 2
    progress = Progress(None if stream is sys.stdin else os.fstat(stream.fileno()).st_size)
    try:
        published = asyncio.run(publish_lines(stream, settings.bootstrap, topic, args.app,
                                              envelopes=not args.single, progress=progress))
        progress.done()
        print(f"published {published.events}, rejected {published.rejected}", flush=True)
    except KafkaError as exc:
        progress.done()
        print(f"error: cannot publish to Kafka at {settings.bootstrap} ({type(exc).__name__}); start the broker "
              f"(`tally broker start`) or pass --bootstrap", file=sys.stderr)
        return 2
    finally:
        if stream is not sys.stdin:
            stream.close()
    if published.offsets and not args.no_wait:
        try:
            state = asyncio.run(wait_until_taken(settings.bootstrap, settings.app_id, topic, published.offsets))
            if state == "taken":
                print("\n".join(report_outcome(settings, topic, published)))
            elif state == "no worker":
                print(f"no worker of group {settings.app_id!r} is running: the events wait in Kafka until one "
                      f"starts (`tally worker`)")
            else:
                print(f"the worker of group {settings.app_id!r} has not taken them for a minute: the events "
                      f"wait in Kafka; see its /stats/")
        except KafkaError as exc:
            print(f"published; Kafka did not say whether the worker took them ({type(exc).__name__}): "
                  f"see the worker's /stats/")
    return 1 if published.rejected else 0
