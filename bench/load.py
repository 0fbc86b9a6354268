"""The benchmark's input: generated traffic, serialised once, and two ways to put it into Kafka.

`preload` fills a topic as fast as the broker takes it, before any consumer under test starts, so
the producer is never what is measured. `send_steady` offers a fixed rate and records where each
event landed (partition, offset) and when it was sent, for the produce-to-queryable latency.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass

from streams.producer.generator import generate_actions, generate_profiles, partition_key
from streams.stages.flow import partition_for_user

DAYS = 28  # four weeks of history: every active-user window has something to count
USERS = 2_000
SEED = 7


@dataclass(frozen=True)
class Traffic:
    messages: list[tuple[bytes, bytes]]  # (key = stored user id, value = UserAction bytes), in event-time order
    profiles: list[tuple[bytes, bytes]]  # (key = stored user id, value = UserProfile bytes)


def events_per_weekday(events: int, days: int = DAYS) -> int:
    """The generator's weekday volume that yields about `events` over `days` (weekends get a fifth)."""
    weekdays = days * 5 / 7
    return max(1, int(events / (weekdays + (days - weekdays) * 0.2)) + 1)


def generate(events: int, seed: int = SEED, users: int = USERS, today: dt.date | None = None) -> Traffic:
    """`events` realistic actions ending before today (UTC), keyed like the SDK keys them, and every
    user's profile."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    start = today - dt.timedelta(days=DAYS)
    key = partition_key()
    actions = generate_actions(seed, start, DAYS, users, events_per_weekday(events) + 1)  # +1: rounding never falls short
    messages = [(key(a.user), a.SerializeToString()) for a in itertools.islice(actions, events)]
    if len(messages) < events:
        raise ValueError(f"generator gave {len(messages)} events, wanted {events}")
    now_ms = int(time.time() * 1000)
    profiles = [(key(p.user), p.SerializeToString()) for p in generate_profiles(seed, users, now_ms)]
    return Traffic(messages, profiles)


def by_partition(messages: list[tuple[bytes, bytes]], partitions: int) -> dict[int, list[tuple[bytes, bytes]]]:
    """Messages grouped by the partition Kafka's default partitioner gives their key, order kept."""
    grouped: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for key, value in messages:
        grouped[partition_for_user(key.decode(), partitions)].append((key, value))
    return grouped


def envelopes(messages: list[tuple[bytes, bytes]], partitions: int, envelope: int) -> list[tuple[bytes, bytes, int]]:
    """The messages packed as the SDK packs them, `envelope` actions per UserActionBatch:
    (key, envelope bytes, partition)."""
    from streams.producer.envelopes import pack_envelopes
    return [(key, value, partition) for key, value, partition, _, _ in pack_envelopes(
        [(k, v, None) for k, v in messages], partitions, max_bytes=1024 * 1024, max_actions=envelope)]


async def preload(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], partitions: int,
                  envelope: int = 1) -> int:
    """Write every message into `topic` (keyed partitioning, like the SDK), in large batches; with
    `envelope` > 1, that many actions per UserActionBatch message. Returns the messages acked."""
    from aiokafka import AIOKafkaProducer

    from streams.contract import ENVELOPE_HEADER
    # idempotent: a retried request must not duplicate or reorder a partition (weeks of event time
    # go in within seconds, so a reordered request would look days late)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=20,
                                max_batch_size=1024 * 1024, max_request_size=4 * 1024 * 1024)
    if envelope > 1:
        headers = [ENVELOPE_HEADER]
        grouped: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for key, value, partition in envelopes(messages, partitions, envelope):
            grouped[partition].append((key, value))
    else:
        headers, grouped = None, by_partition(messages, partitions)
    await producer.start()
    try:
        pending = []
        for partition, values in sorted(grouped.items()):
            batch = producer.create_batch()
            for key, value in values:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(messages)


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    sent_s: float  # wall clock (time.time) when the send was issued


async def send_steady(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], rate: float,
                      restamp, envelope_partitions: int | None = None) -> list[Sent]:
    """Send `messages` at `rate` per second, in 10 ms ticks; `restamp(value, now_ms)` gives the bytes to send
    (event time = send time). With `envelope_partitions`, each tick's events go as one UserActionBatch per
    partition, as the SDK packs each round. Returns where and when each event was sent."""
    from aiokafka import AIOKafkaProducer

    from streams.producer.envelopes import pack_envelopes
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    try:
        futures: list[tuple[list[float], asyncio.Future]] = []
        started = time.monotonic()
        sent = 0
        while sent < len(messages):
            due = min(len(messages), int((time.monotonic() - started) * rate) + 1)
            now = time.time()
            tick = [(key, restamp(value, int(now * 1000)), now) for key, value in messages[sent:due]]
            if envelope_partitions:
                for key, value, partition, headers, times in pack_envelopes(tick, envelope_partitions, 900_000):
                    futures.append((times, await producer.send(topic, value, key=key, partition=partition,
                                                               headers=headers)))
            else:
                for key, value, sent_s in tick:
                    futures.append(([sent_s], await producer.send(topic, value, key=key)))
            sent = due
            await asyncio.sleep(0.01)
        results = []
        for times, future in futures:
            metadata = await future
            results.extend(Sent(metadata.partition, metadata.offset, sent_s) for sent_s in times)
        return results
    finally:
        await producer.stop()
