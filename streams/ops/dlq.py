"""`tally dlq inspect|replay`: see what the pipeline refused, and send it back once it is fixed.

Both read the dead-letter topic from the beginning up to its end as it was when they started,
without a consumer group (nothing is committed, anyone can look). Replay re-publishes the
scrubbed payloads of one reason to the input topic, keyed by user; the replayed events keep
their event_id, so a second replay collapses in ClickHouse, and `--since-offset` skips what an
earlier replay already sent (per DLQ partition: "0:120,1:7", as the previous replay prints it).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import heapq
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from streams.contract import DeadLetter

UNREADABLE = "<unreadable dead letter>"  # a DLQ message that is not a DeadLetter at all
REPLAY_HEADER = "tally-replayed-from"    # "<dlq topic>/<partition>/<offset>" on every replayed message
SCRUBBED_HEADER = "tally-scrubbed"       # b"1": the payload went through scrubbing once already


@dataclass(frozen=True)
class SinceOffsets:
    """Where reading starts in each DLQ partition: `by_partition`, else `default`."""
    by_partition: dict[int, int] = field(default_factory=dict)
    default: int = 0

    def __call__(self, partition: int) -> int:
        return self.by_partition.get(partition, self.default)

    @classmethod
    def parse(cls, text: str) -> "SinceOffsets":
        """"0:120,1:7" (partition:offset, other partitions from 0) or "120" (every partition)."""
        try:
            if ":" not in text:
                return cls(default=int(text))
            pairs = (entry.split(":") for entry in text.split(",") if entry.strip())
            return cls({int(partition): int(offset) for partition, offset in pairs})
        except ValueError:
            raise ValueError(f"{text!r}: expected OFFSET or PARTITION:OFFSET[,PARTITION:OFFSET...]") from None

    def __str__(self) -> str:
        return ",".join(f"{partition}:{offset}" for partition, offset in sorted(self.by_partition.items()))


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter and where it sits in the DLQ topic."""
    partition: int
    offset: int
    letter: DeadLetter | None  # None when the message could not be decoded

    @property
    def reason(self) -> str:
        return self.letter.reason if self.letter is not None else UNREADABLE


@dataclass(frozen=True)
class ReplayMessage:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None = None  # the user's input partition; None: the key decides


# ---------------------------------------------------------------- pure parts

def decode_record(partition: int, offset: int, value: bytes | None) -> DeadLetterRecord:
    letter = DeadLetter()
    try:
        letter.ParseFromString(value or b"")
    except DecodeError:
        return DeadLetterRecord(partition, offset, None)
    return DeadLetterRecord(partition, offset, letter if value else None)


@dataclass
class Inspection:
    """Counts by reason and the most recent dead letters, kept while records stream past."""
    reason: str | None = None      # only this reason, if given
    limit: int = 20
    counts: Counter = field(default_factory=Counter)
    _recent: list = field(default_factory=list)  # min-heap of (received, partition, offset, record)

    def add(self, records: Iterable[DeadLetterRecord]) -> None:
        for record in records:
            if self.reason is not None and record.reason != self.reason:
                continue
            self.counts[record.reason] += 1
            received = record.letter.received_epoch_ms if record.letter is not None else 0
            entry = (received, record.partition, record.offset, record)
            if len(self._recent) < self.limit:
                heapq.heappush(self._recent, entry)
            elif self.limit and entry[:3] > self._recent[0][:3]:
                heapq.heapreplace(self._recent, entry)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_reason(self) -> list[tuple[str, int]]:
        """Reasons with their counts, the most frequent first."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))

    def most_recent(self) -> list[DeadLetterRecord]:
        """Newest first, by the time the pipeline received them."""
        return [entry[3] for entry in sorted(self._recent, key=lambda entry: entry[:3], reverse=True)]


def format_time(epoch_ms: int) -> str:
    if not epoch_ms:
        return "-"
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_record(record: DeadLetterRecord) -> str:
    """One line: time, reason, where the original was, app, event id, then the detail."""
    letter = record.letter
    if letter is None:
        return f"-  {UNREADABLE}  dlq[{record.partition}]@{record.offset}"
    source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
    return (f"{format_time(letter.received_epoch_ms)}  {letter.reason}  {source}  app={letter.app or '-'}  "
            f"event_id={letter.event_id or '-'}  {letter.detail}")


def format_inspection(inspection: Inspection, topic: str) -> str:
    only = f" with reason {inspection.reason!r}" if inspection.reason else ""
    lines = [f"{inspection.total} dead letters{only} in {topic}"]
    if inspection.total:
        width = max(len(reason) for reason in inspection.counts)
        lines += ["", "by reason:"]
        lines += [f"  {reason:<{width}}  {count:>8}" for reason, count in inspection.by_reason()]
        recent = inspection.most_recent()
        lines += ["", f"most recent {len(recent)}:"] + [f"  {format_record(record)}" for record in recent]
    return "\n".join(lines)


def select_for_replay(records: Iterable[DeadLetterRecord], reason: str,
                      since: SinceOffsets = SinceOffsets()) -> list[DeadLetterRecord]:
    """Dead letters of `reason` at or after their partition's `since` offset that carry a payload to replay."""
    return [record for record in records
            if record.letter is not None and record.letter.reason == reason
            and record.offset >= since(record.partition) and record.letter.scrubbed_payload]


def replay_message(record: DeadLetterRecord, dlq_topic: str) -> ReplayMessage:
    letter = record.letter
    return ReplayMessage(
        key=letter.user.encode() if letter.user else None,
        value=letter.scrubbed_payload,
        headers=[(REPLAY_HEADER, f"{dlq_topic}/{record.partition}/{record.offset}".encode()),
                 (SCRUBBED_HEADER, b"1")],
        # the copy's user is a pseudonym now: it goes where the person's events are, not where it hashes
        partition=letter.user_partition if letter.HasField("user_partition") else None)


@dataclass
class ReplayTally:
    """What a replay run saw and sent; `next_since` is what to pass next time: per DLQ partition read,
    past the last letter of the reason (or where this run started in it, when it had none)."""
    reason: str
    replayed: int = 0
    without_payload: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)

    def add(self, records: Iterable[DeadLetterRecord], selected: list[DeadLetterRecord]) -> None:
        for record in records:
            if record.letter is None or record.letter.reason != self.reason:
                continue
            self.next_offsets[record.partition] = max(self.next_offsets.get(record.partition, 0), record.offset + 1)
            if not record.letter.scrubbed_payload:
                self.without_payload += 1
        self.replayed += len(selected)

    def read_partitions(self, partitions: Iterable[int], since: SinceOffsets) -> None:
        """Every partition read gets a next offset, at least where this run started in it."""
        for partition in partitions:
            self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), since(partition))

    @property
    def next_since(self) -> SinceOffsets | None:
        return SinceOffsets(dict(self.next_offsets)) if any(self.next_offsets.values()) else None


def format_replay(tally: ReplayTally, dlq_topic: str, input_topic: str, dry_run: bool) -> str:
    verb = "would replay" if dry_run else "replayed"
    lines = [f"{verb} {tally.replayed} dead letters with reason {tally.reason!r} from {dlq_topic} to {input_topic}"]
    if tally.without_payload:
        lines.append(f"skipped {tally.without_payload} without a payload (the original could not be parsed)")
    if tally.next_since is not None:
        lines.append(f"to skip these next time: --since-offset {tally.next_since}")
    return "\n".join(lines)


# ---------------------------------------------------------------- Kafka edges

async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The topic's partition numbers; [] if it does not exist (asked without auto-creating it)."""
    from aiokafka.admin import AIOKafkaAdminClient
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics()  # all topics: naming one may auto-create it
    finally:
        await admin.close()
    return sorted(partition["partition"] for entry in described if entry["topic"] == topic
                  for partition in entry["partitions"])


async def read_dead_letters(bootstrap: str, topic: str, since: SinceOffsets = SinceOffsets(),
                            batch_records: int = 5_000,
                            partition_numbers: list[int] | None = None) -> AsyncIterator[list[DeadLetterRecord]]:
    """Batches of the topic's records from `since` (per partition) up to its end at the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    if partition_numbers is None:
        partition_numbers = await topic_partitions(bootstrap, topic)
    partitions = [TopicPartition(topic, p) for p in partition_numbers]
    if not partitions:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=batch_records)
    await consumer.start()
    try:
        consumer.assign(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        pending = {tp for tp in partitions if ends[tp] > max(beginnings[tp], since(tp.partition))}
        for tp in pending:
            consumer.seek(tp, max(beginnings[tp], since(tp.partition)))
        for tp in set(partitions) - pending:
            consumer.pause(tp)
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=1000, max_records=batch_records)
            batch = [decode_record(tp.partition, message.offset, message.value)
                     for tp, messages in fetched.items() for message in messages if message.offset < ends[tp]]
            if batch:
                yield batch
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()


async def inspect(bootstrap: str, topic: str, reason: str | None = None, limit: int = 20) -> Inspection:
    inspection = Inspection(reason=reason, limit=limit)
    async for batch in read_dead_letters(bootstrap, topic):
        inspection.add(batch)
    return inspection


async def replay(bootstrap: str, dlq_topic: str, input_topic: str, reason: str,
                 since: SinceOffsets = SinceOffsets(), dry_run: bool = False) -> ReplayTally:
    """Re-publish the payloads of `reason` to `input_topic`; every send is acknowledged before returning."""
    from aiokafka import AIOKafkaProducer
    tally = ReplayTally(reason=reason)
    producer = None
    try:
        if not dry_run:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=10)
            await producer.start()
        partitions = await topic_partitions(bootstrap, dlq_topic)
        async for batch in read_dead_letters(bootstrap, dlq_topic, since, partition_numbers=partitions):
            selected = select_for_replay(batch, reason, since)
            if producer is not None:
                sends = [await producer.send(input_topic, message.value, key=message.key, partition=message.partition,
                                             headers=message.headers)
                         for message in map(lambda record: replay_message(record, dlq_topic), selected)]
                await asyncio.gather(*sends)
            tally.add(batch, selected)
        tally.read_partitions(partitions, since)
    finally:
        if producer is not None:
            await producer.stop()
    return tally


# ---------------------------------------------------------------- command line

def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser("dlq", help="inspect and replay dead letters")
    commands = parser.add_subparsers(dest="dlq_command", required=True)

    inspect_parser = commands.add_parser("inspect", help="counts by reason and the most recent dead letters")
    inspect_parser.add_argument("--reason", help="only this reason")
    inspect_parser.add_argument("--limit", type=int, default=20, help="how many recent dead letters to show")
    inspect_parser.add_argument("--dlq-topic", help="default: the settings' dead-letter topic")
    add_settings_args(inspect_parser)
    inspect_parser.set_defaults(func=_cli_inspect)

    replay_parser = commands.add_parser("replay", help="re-publish the payloads of one reason to the input topic")
    replay_parser.add_argument("--reason", required=True)
    replay_parser.add_argument("--dry-run", action="store_true", help="count, send nothing")
    replay_parser.add_argument("--since-offset", type=_since_offsets_arg, default=SinceOffsets(),
                               help="skip what an earlier replay sent: PARTITION:OFFSET,... as it printed them "
                                    "(or one OFFSET for every partition)")
    replay_parser.add_argument("--dlq-topic", help="default: the settings' dead-letter topic")
    replay_parser.add_argument("--topic", help="input topic to replay into; default: the settings' input topic")
    add_settings_args(replay_parser)
    replay_parser.set_defaults(func=_cli_replay)


def _since_offsets_arg(text: str) -> SinceOffsets:
    import argparse
    try:
        return SinceOffsets.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cli_inspect(args) -> int:
    from streams.cli import settings_from_args
    settings = settings_from_args(args)
    topic = args.dlq_topic or settings.topics.dead_letters
    inspection = asyncio.run(inspect(settings.bootstrap, topic, args.reason, max(args.limit, 0)))
    print(format_inspection(inspection, topic))
    return 0


def _cli_replay(args) -> int:
    from streams.cli import settings_from_args
    settings = settings_from_args(args)
    dlq_topic = args.dlq_topic or settings.topics.dead_letters
    input_topic = args.topic or settings.topics.user_actions
    tally = asyncio.run(replay(settings.bootstrap, dlq_topic, input_topic, args.reason, args.since_offset,
                               dry_run=args.dry_run))
    print(format_replay(tally, dlq_topic, input_topic, args.dry_run))
    return 0
