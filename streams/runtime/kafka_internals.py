"""Every use of a Faust or aiokafka internal, in one place, behind small functions.

The offset guarantees need a few things neither library offers publicly: where Faust keeps the
gaps its commits fill (`Consumer._gap`) and the offset its fetch loop reads next
(`Consumer._read_offset`), the aiokafka consumer inside Faust's consumer thread, the producer's
aiokafka client, and writing a table key to an explicit changelog partition. The input topic is
read past Faust's per-message hand-off (`SelfReadingApp`): Faust's fetch loop (`Consumer._getmany`)
is kept off it, the agent reads it with aiokafka's `getmany` from the partitions Faust has active
(`Consumer._get_active_partitions`), and Faust's wait for in-progress work (`wait_empty`, before a
rebalance or a stop lets partitions go) first waits for the agent's. The versions these
were written against are pinned in `pyproject.toml`; `tests/test_kafka_internals.py` fails by
name when one of them is missing or changes shape.
"""
from __future__ import annotations

import asyncio
import sys

import faust
from aiokafka import TopicPartition
from faust.types import TP

# (owner, attribute) pairs this module relies on: checked by tests/test_kafka_internals.py
FAUST_APP_INTERNALS = ("_new_consumer",)
FAUST_CONSUMER_INTERNALS = ("_gap", "_read_offset", "_add_gap", "_thread", "_getmany", "_get_active_partitions",
                            "wait_empty", "flow_active")
FAUST_THREAD_INTERNALS = ("_ensure_consumer", "call_thread")
FAUST_PRODUCER_INTERNALS = ("_ensure_producer",)
FAUST_TABLE_INTERNALS = ("data", "send_changelog")


class SelfReadingApp(faust.App):
    """A Faust app whose fetch loop leaves `self_read_topics` to the agent that reads them itself
    (`read_records`), a whole fetch per call. Faust keeps the group, the assignment, the tables and
    their recovery, and says which partitions may be read (`readable_partitions`); before it lets
    partitions go it awaits `before_wait_empty` (the agent makes what it read durable and commits)."""

    self_read_topics: frozenset = frozenset()
    before_wait_empty = None  # async callable, set by the agent's owner

    def _new_consumer(self):
        consumer = super()._new_consumer()
        fetch, wait_empty = consumer._getmany, consumer.wait_empty

        async def getmany_without_self_read(active_partitions, timeout):
            if active_partitions is not None:
                active_partitions = {tp for tp in active_partitions if tp.topic not in self.self_read_topics}
                if not active_partitions:  # aiokafka takes "no partitions" for "every partition"
                    await asyncio.sleep(timeout)
                    return {}
            return await fetch(active_partitions, timeout)

        async def wait_for_self_read_first():
            if self.before_wait_empty is not None:
                await self.before_wait_empty()
            await wait_empty()

        consumer._getmany = getmany_without_self_read
        consumer.wait_empty = wait_for_self_read_first
        return consumer


def readable_partitions(app, topic: str) -> set:
    """The assigned partitions of `topic` that Faust would fetch now: none from the start of a
    rebalance until its seek to the committed offsets is done (`rebalancing`), none while its flow
    is stopped (a stop), and none that is paused (its tables recovering)."""
    consumer = app.consumer
    if app.rebalancing or not consumer.flow_active:
        return set()
    return {TopicPartition(tp.topic, tp.partition) for tp in consumer._get_active_partitions() if tp.topic == topic}


async def read_records(consumer, partitions, timeout_ms: int, max_records: int) -> dict:
    """aiokafka's `getmany` on the consumer in Faust's consumer thread: what it has fetched of
    `partitions`, up to `max_records`, waiting up to `timeout_ms` when it has nothing."""
    thread = consumer._thread
    return await thread.call_thread(thread._ensure_consumer().getmany, *partitions, timeout_ms=timeout_ms,
                                    max_records=max_records)


def producer_client(app):
    """The aiokafka client under Faust's producer (created on first use)."""
    return app.producer._ensure_producer().client


async def track_topics(client, topics) -> None:
    """Have an aiokafka client keep `topics` in every metadata refresh from now on.

    aiokafka refreshes metadata only for the topics it tracks (every topic while it tracks none),
    and a send to a topic it already knows does not track it. So a producer that learned a topic
    from an all-topics refresh forgets it at the next refresh made for another topic, and the
    batches waiting for that topic's leader stay unsent until they expire (20 minutes with
    Faust's producer settings). Seen: a worker's first dead letters never sent, their batch never
    acknowledged. Tracking every topic a producer writes to, before its first send, avoids it."""
    for topic in topics:
        client.add_topic(topic)
    await client.force_metadata_update()


async def call_in_consumer_thread(consumer, method: str, *args):
    """Call a method of the aiokafka consumer inside Faust's consumer thread, in that thread."""
    thread = consumer._thread
    return await thread.call_thread(getattr(thread._ensure_consumer(), method), *args)


def forget_gaps_from(consumer, tp: TP, offset: int) -> None:
    """Drop Faust's record of gaps at `offset` and after, so its commits wait for those offsets."""
    consumer._gap[tp].chop(offset, sys.maxsize)


def set_read_offset(consumer, tp: TP, offset: int) -> None:
    """What Faust's own seek does besides seeking: its fetch loop takes messages from `offset` on."""
    consumer._read_offset[tp] = offset or None


async def add_gap(consumer, tp: TP, first: int, last: int) -> None:
    """Tell Faust that offsets first..last have no records, so its commits may pass them."""
    await consumer._add_gap(tp, first, last)


def mark_acked(message) -> None:
    """A message Faust must not wait for (its offset is acked through another copy)."""
    message.acked = True


def table_items(table) -> list:
    """A table's (key, value) pairs as held in memory, without a changelog send or a stream context."""
    return list(table.data.items())


def table_set(table, partition: int, key: str, value):
    """Write a table key to an explicit changelog partition; returns the send's future.

    Faust picks the changelog partition from the *current* event, which inside a `take_events`
    batch is the batch's last event: wrong for keys of the batch's other partitions. And Faust
    does not wait for changelog sends before committing offsets, so the caller awaits the future
    before its batch is acked: state is durable before the input offset moves."""
    table.data[key] = value
    return table.send_changelog(partition, key, value)


def table_delete(table, partition: int, key: str):
    table.data.pop(key, None)
    return table.send_changelog(partition, key, None)
