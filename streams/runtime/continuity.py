"""The offset-continuity guard: an agent takes each partition of its topic strictly in offset order.

`InputContinuity` is the bookkeeping (pure); `OffsetGuard` does its I/O: asks the broker where a
partition starts and whether a hole has records, seeks back to holes, and keeps Faust's commits
from passing them (through `kafka_internals`).
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from streams.runtime.kafka_internals import (add_gap, call_in_consumer_thread, forget_gaps_from, mark_acked,
                                             set_read_offset)

log = logging.getLogger(__name__)


class InputContinuity:
    """An agent takes each partition of its topic strictly in offset order.

    Around a rebalance Faust can fail to deliver a message and then commit past it (faust-streaming
    #216/#221: its fetch loop records an offset jump as a gap that the next commit fills, a rule
    meant for transaction markers, and its commit check lets one missing offset at the committed
    head through). So a jump is a hole until shown otherwise: messages past it are neither processed
    nor acked, and the partition is sought back to the hole; messages before it were processed
    already (a redelivery) and are skipped. A hole the broker itself has no record at (transaction
    markers of a transactional producer, records deleted by retention) is confirmed by a look of
    its own and then passed."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.expected: dict[int, int] = {}  # partition -> the offset to take next
        self.rewinds: dict[int, tuple[int, float]] = {}  # partition -> (hole, monotonic time of last seek)
        self.to_seek: dict[int, int] = {}   # partition -> offset, for the agent to seek after this step
        self.to_check: dict[int, tuple[int, int]] = {}  # partition -> (new hole, offset seen past it)
        self.resolved: list[int] = []        # partitions whose hole has just been filled

    def start(self, partition: int, offset: int | None) -> None:
        """Where a newly assigned partition starts: its committed offset, or for a new group its first
        record (None: anywhere)."""
        if offset is not None:
            self.expected[partition] = offset

    def admit(self, partition: int, offset: int) -> bool:
        expected = self.expected.get(partition)
        if expected is None or offset == expected:
            self.expected[partition] = offset + 1
            if self.rewinds.pop(partition, None) is not None:
                self.resolved.append(partition)
            # back in order: a seek still pending (asked by stale read-ahead earlier in this step) is
            # moot, and left there it would hide the partition's next hole from its look-up
            self.to_seek.pop(partition, None)
            return True
        if offset > expected:
            if partition not in self.rewinds and partition not in self.to_seek:
                self.to_check[partition] = (expected, offset)
            self.to_seek[partition] = expected
        return False

    def suspect_hole(self, partition: int, hole: int, high: int) -> None:
        """Offsets from `hole` up to the broker's `high` never came while the agent sat idle: a hole
        with nothing after it, to look up and re-read as any other."""
        self.expected[partition] = hole
        self.to_check[partition] = (hole, high)
        self.to_seek[partition] = hole

    def pass_hole(self, partition: int, hole: int, next_offset: int) -> bool:
        """The broker has no record from `hole` up to `next_offset`: go on from there. False if the
        partition has moved on meanwhile (the hole filled, or the partition revoked)."""
        if self.expected.get(partition) != hole:
            return False
        self.expected[partition] = next_offset
        if partition in self.rewinds:  # read-ahead past next_offset may still come: skipped quietly
            self.rewinds[partition] = (next_offset, self.rewinds[partition][1])
        if partition in self.to_seek:
            self.to_seek[partition] = next_offset
        return True

    def take_seeks(self, now: float, retry_after: float) -> dict[int, int]:
        """The seeks to make now: holes seen in this step, and holes still open `retry_after` seconds
        after their last seek (the re-read itself can be dropped by Faust behind stale messages)."""
        seeks, self.to_seek = self.to_seek, {}
        for partition, (hole, sought_at) in self.rewinds.items():
            if now - sought_at >= retry_after:
                seeks[partition] = hole
        for partition, hole in seeks.items():
            self.rewinds[partition] = (hole, now)
        return seeks

    def forget(self, partition: int) -> None:
        """A revoked partition: its next owner starts wherever its committed offset says."""
        self.expected.pop(partition, None)
        self.rewinds.pop(partition, None)
        self.to_seek.pop(partition, None)
        self.to_check.pop(partition, None)


class BrokerLookup:
    """A consumer outside the group, started on first use, that looks up which offsets the broker has."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumer = None
        self.lock = asyncio.Lock()

    async def first_offset(self, topic: str, partition: int, offset: int, timeout: float = 5.0) -> int | None:
        """The offset of the first record from `offset` on (None: nothing there yet). Reading past
        control records (transaction markers) up to the partition's end says "nothing" at once,
        instead of after the whole timeout: an idle transactional topic ends in a marker."""
        async with self.lock:
            if self.consumer is None:
                consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                            auto_offset_reset="earliest", max_partition_fetch_bytes=1024)
                await consumer.start()
                self.consumer = consumer
            tp = TopicPartition(topic, partition)
            self.consumer.assign([tp])
            self.consumer.seek(tp, offset)
            end = (await self.consumer.end_offsets([tp]))[tp]
            deadline = time.monotonic() + timeout
            while True:
                records = (await self.consumer.getmany(tp, timeout_ms=200, max_records=1)).get(tp, [])
                if records:
                    return records[0].offset
                if await self.consumer.position(tp) >= end or time.monotonic() >= deadline:
                    return None

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


def admit_in_order(order: InputContinuity, message) -> bool:
    """Whether `message` is the next of its partition. One that is not (past a hole, or a repeat) is
    marked acked: its offset is acked through the copy taken in order, and Faust's wait_empty
    (rebalance, shutdown) must not wait for this one."""
    if order.admit(message.partition, message.offset):
        return True
    mark_acked(message)
    return False


class OffsetGuard:
    """Keeps the agents' topics in order: where partitions start, holes looked up and re-read."""

    def __init__(self, app, bootstrap: str) -> None:
        self.app = app
        self.broker_lookup = BrokerLookup(bootstrap)
        self.hole_checks: set[asyncio.Task] = set()
        self.offset_holes = {"reread": 0, "passed": 0}  # for /stats/ and /metrics/
        self.stall_checked: dict[int, int] = {}  # input partition -> the highwater it was last checked at

    async def learn_where_partitions_start(self, continuity: InputContinuity, partitions: set[int]) -> None:
        """Where each partition first seen since its assignment starts, asked of the broker: its
        committed offset, else (a new group reads from the earliest) its first record. Faust can
        deliver messages before its own seek to the committed offsets has finished."""
        for partition in partitions - continuity.expected.keys():
            try:
                continuity.start(partition, await self.where_partition_starts(TP(continuity.topic, partition)))
            except Exception as exc:  # then the partition starts wherever its first message is
                log.warning("could not read where %s partition %d starts: %r", continuity.topic, partition, exc)

    async def where_partition_starts(self, tp: TP) -> int | None:
        """The group's committed offset, else (a new group reads from the earliest) the first record."""
        start = await call_in_consumer_thread(self.app.consumer, "committed", tp)
        return start if start is not None else await self.broker_lookup.first_offset(tp.topic, tp.partition, 0)

    async def keep_in_order(self, continuity: InputContinuity) -> None:
        """Seek partitions back to their holes, and clear Faust's record of gaps from a hole on, so
        its commits wait for the re-read messages (`_gap`: Faust's internal)."""
        for partition, (hole, seen) in continuity.to_check.items():
            check = asyncio.ensure_future(self.check_hole(continuity, partition, hole, seen))
            self.hole_checks.add(check)
            check.add_done_callback(self.hole_checks.discard)
        continuity.to_check.clear()
        seeks = continuity.take_seeks(time.monotonic(), retry_after=1.0)
        if not (seeks or continuity.resolved):
            return
        consumer, topic = self.app.consumer, continuity.topic
        for partition in continuity.resolved:
            forget_gaps_from(consumer, TP(topic, partition), continuity.expected[partition] - 1)
        continuity.resolved.clear()
        assigned = consumer.assignment()
        for partition, hole in seeks.items():
            tp = TP(topic, partition)
            if tp not in assigned:  # a stale message of a partition revoked since: its owner re-reads it
                continuity.forget(partition)
                continue
            forget_gaps_from(consumer, tp, hole)
            try:
                # in the aiokafka consumer's own thread: its seek wakes that thread's fetch task, which a
                # seek from this thread (Faust's Consumer.seek) can leave asleep; then what Faust's
                # seek does besides, so its fetch loop takes the re-read messages
                await call_in_consumer_thread(consumer, "seek", tp, hole)
                set_read_offset(consumer, tp, hole)
            except Exception as exc:  # e.g. revoked meanwhile; an open hole is sought again later
                log.warning("could not seek %s partition %d back to %d: %r", topic, partition, hole, exc)

    async def catch_stalled_partitions(self, order: InputContinuity) -> None:
        """With the agent idle, an input partition whose broker has records past the offset the agent
        expects next is a hole with nothing after it, which no later message can reveal: seen when
        Faust dropped a partition's whole backlog at a restart. It is checked and re-read as any hole
        (once per highwater, so an idle partition ending in a transaction marker is looked up once)."""
        consumer = self.app.consumer
        for tp in consumer.assignment():
            partition = tp.partition
            if tp.topic != order.topic or partition in order.rewinds or partition in order.to_seek:
                continue
            high = consumer.highwater(tp)
            if not high or self.stall_checked.get(partition) == high:
                continue
            expected = order.expected.get(partition)
            if expected is None:
                expected = await self.where_partition_starts(tp)
            if expected is None or expected >= high:
                continue
            self.stall_checked[partition] = high
            order.suspect_hole(partition, expected, high)
        await self.keep_in_order(order)

    async def check_hole(self, continuity: InputContinuity, partition: int, hole: int, seen: int) -> None:
        """Look up a hole at the broker: where it has no records, pass the hole (and give Faust back its
        gap, so its commits pass it too); where it has, the re-read under way fills the hole. Tried
        again each second while the hole stays open and the broker cannot be asked."""
        topic = continuity.topic
        while continuity.expected.get(partition) == hole:
            try:
                first = await self.broker_lookup.first_offset(topic, partition, hole)
            except Exception as exc:
                log.warning("could not look up offset %d of %s partition %d: %r", hole, topic, partition, exc)
                await asyncio.sleep(1.0)
                continue
            if first == hole:
                self.offset_holes["reread"] += 1
                log.error("%s partition %d: offsets %d..%d were not delivered to the agent; reading again "
                          "from %d", topic, partition, hole, seen - 1, hole)
            elif first is None:  # no record from the hole on (a trailing transaction marker): nothing to read
                continuity.rewinds.pop(partition, None)
                log.info("%s partition %d: the broker has no records from offset %d on (a transaction marker); "
                         "waiting for more", topic, partition, hole)
            elif continuity.pass_hole(partition, hole, first):
                self.offset_holes["passed"] += 1
                log.info("%s partition %d: the broker has no records at offsets %d..%d (transaction markers, "
                         "or deleted by retention); going on from %d", topic, partition, hole, first - 1, first)
                await add_gap(self.app.consumer, TP(topic, partition), hole, first - 1)
            return
