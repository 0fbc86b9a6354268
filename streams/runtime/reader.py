"""The actions agent's input, read a fetch at a time: aiokafka's `getmany` on the partitions Faust
has active, with no per-message hand-off, and commits made by the agent once a batch is durable.

Faust keeps the group and says which partitions may be read (none while a rebalance, a stop or a
table recovery is under way); its fetch loop is kept off the topic (`kafka_internals.SelfReadingApp`).
Records read across a rebalance are dropped, not processed: the new assignment reads again from
the committed offsets, and the offset guard catches any jump that would be left.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition

from streams.runtime.kafka_internals import call_in_consumer_thread, read_records, readable_partitions

COMMIT_TIMEOUT_S = 15.0  # a commit not done by then is given up: the partition's next owner reads it again

log = logging.getLogger(__name__)


class InputReader:
    def __init__(self, app, topic: str) -> None:
        self.app, self.topic = app, topic
        self.stepping = asyncio.Lock()  # held while read records go through the stages; a drain waits for it
        self._generation = None

    async def take(self, max_records: int, max_bytes: int, timeout: float) -> list:
        """The records fetched so far, in offset order per partition: reads of up to `max_records`
        until they hold `max_bytes` or nothing more has been fetched, so a take of single messages
        is as many bytes as one of envelopes. Waits up to `timeout` seconds when there are none."""
        consumer = self.app.consumer
        partitions = readable_partitions(self.app, self.topic)
        if not partitions:
            await asyncio.sleep(min(timeout, 0.05))
            return []
        self._generation = self.app.consumer_generation_id
        taken, size, timeout_ms, ask = [], 0, int(timeout * 1000), max_records
        while True:
            fetched = await read_records(consumer, partitions, timeout_ms, ask)
            read = [record for records in fetched.values() for record in records]
            taken += read
            size += sum(len(record.value or b"") for record in read)
            if len(read) < ask or size >= max_bytes or self.app.rebalancing:
                return taken  # (a rebalance begun: read no further past what `still_readable` drops)
            # more is fetched: as many records again as the bytes still to take hold, at their size so far
            timeout_ms, ask = 0, max(max_records, (max_bytes - size) * len(taken) // max(size, 1) + 1)

    def still_readable(self, records: list) -> list:
        """`records` minus those of partitions Faust has stopped since they were read (a rebalance
        began): call it holding `stepping`, so no drain runs between this and their step."""
        if self.app.consumer_generation_id != self._generation:
            return []
        readable = {tp.partition for tp in readable_partitions(self.app, self.topic)}  # once, not per record
        return [record for record in records if record.partition in readable]

    async def commit(self, offsets: dict[int, tuple[int, int]]) -> None:
        """Commit past the last offset of each partition still assigned (partition -> (first, last)).
        A commit the group refuses (it has rebalanced) is logged: the partition's next owner reads
        those events again, and stores and counts each once."""
        assigned = self.app.consumer.assignment()
        to_commit = {tp: last + 1 for tp, last in ((TopicPartition(self.topic, p), last)
                                                   for p, (_, last) in offsets.items()) if tp in assigned}
        if not to_commit:
            return
        try:
            # bounded: in a rebalance the group's rejoin waits for the drain that waits for this commit
            await asyncio.wait_for(call_in_consumer_thread(self.app.consumer, "commit", to_commit), COMMIT_TIMEOUT_S)
        except Exception as exc:
            log.warning("could not commit %s offsets %s (%r): their next owner reads them again", self.topic,
                        {tp.partition: offset for tp, offset in to_commit.items()}, exc)
