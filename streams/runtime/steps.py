"""A step of the actions agent: taken messages through the pure stages into the pending batch, and
which input partitions have gone quiet (the idle-source problem of event time).

`StepRunner.run` is the CPU part of a step; `cut` snapshots a pending batch's state changes when
it is cut, synchronously, before a later step can run; `InputActivity` remembers when each
partition last had input, so the agent can report caught-up, quiet partitions as idle.
"""
from __future__ import annotations

import time
from collections import defaultdict

from streams.runtime.batching import DurableWrite, PendingBatch, StageTimes
from streams.runtime.kafka_internals import table_delete, table_set
from streams.runtime.partitions import WATERMARK_KEY
from streams.stages.flow import events_of, process_batch, unpack
from streams.stages.outcome import Source


class InputActivity:
    """When the agent last stepped, and when each input partition last had a message."""

    def __init__(self) -> None:
        self.started = self.last_step = time.monotonic()
        self.last_input: dict[int, float] = {}  # partition -> monotonic time of its last message
        self.reported_idle: set[int] = set()    # reported idle, not heard from since

    def stepped(self, partitions) -> None:
        self.last_step = now = time.monotonic()
        for partition in partitions:
            self.last_input[partition] = now
            self.reported_idle.discard(partition)

    def forget(self, partition: int) -> None:
        """A revoked partition: its next owner reports it."""
        self.reported_idle.discard(partition)

    def quiet_partitions(self, consumer, topic: str, consumed_offsets: dict[int, int], quiet_seconds: float) -> list[int]:
        """Assigned partitions of `topic`, caught up, with nothing new for `quiet_seconds`, not yet reported."""
        quiet_since = time.monotonic() - quiet_seconds
        idle = []
        for tp in consumer.assignment():
            partition = tp.partition
            if (tp.topic != topic or partition in self.reported_idle
                    or self.last_input.get(partition, self.started) > quiet_since):
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if high is not None and consumed_offsets.get(partition, -1) + 1 >= high:
                idle.append(partition)
        return idle


class StepRunner:
    """Every partition's messages of a step through `process_batch`, the results added to a batch."""

    def __init__(self, stages, ownership, profile_updates, order, activity: InputActivity, times: StageTimes) -> None:
        self.stages, self.ownership, self.profile_updates = stages, ownership, profile_updates
        self.order, self.activity, self.times = order, activity, times

    def run(self, records, batch: PendingBatch) -> PendingBatch:
        started, started_cpu = time.perf_counter(), time.thread_time()
        by_partition: dict[int, list] = defaultdict(list)
        offsets = batch.offsets
        now_ms = int(time.time() * 1000)
        if not batch.events:
            batch.started = time.monotonic()  # a batch's age counts from its first event
        admit, taken, last_offsets = self.order.admit, batch.events.append, {}
        for message in records:
            partition, offset = message.partition, message.offset
            if not admit(partition, offset):
                continue
            taken(message)
            value = message.value
            source = Source(message.topic, partition, offset, len(value) if value else 0)
            if not message.headers:  # one action, as any Kafka client sends it: nothing to unpack
                by_partition[partition].append((value, source))
            else:
                items, bad_envelope = unpack(value, message.headers, source, self.stages, now_ms, as_columns=True)
                by_partition[partition].extend(items)
                if bad_envelope is not None:
                    batch.letters.append(bad_envelope)
                    batch.counts.count_dead_letter(bad_envelope.reason)
            if partition not in offsets:
                offsets[partition] = (offset, offset)
            last_offsets[partition] = offset
        for partition, offset in last_offsets.items():  # (first, last) taken of each partition
            offsets[partition] = (offsets[partition][0], offset)

        self.activity.stepped(by_partition)  # every partition with a message in this step
        for partition, messages in by_partition.items():
            state = batch.states[partition] = self.ownership.state_for(partition)
            result = process_batch(messages, state, self.stages, self.profile_updates.index())
            batch.add_rows(result.columns)
            batch.letters.extend(result.dead_letters)
            batch.reroutes.extend(result.reroutes)
            if result.corrections:
                batch.corrections.setdefault(partition, set()).update(result.corrections)
            batch.counts.add(result.counts)
            for (metric, app, day), count in result.metric_counts.items():
                batch.metric_counts[(partition, metric, app, day)] = count
            if state.watermark_ms:
                newest = batch.progress.get(partition, {}).get("newest_event_ms", {})
                for app, ms in result.newest_event_ms.items():
                    newest[app] = max(ms, newest.get(app, 0))
                batch.progress[partition] = {"watermark_ms": state.watermark_ms,
                                             "watermark_day": state.activity.watermark_day,
                                             "newest_event_ms": newest}
        times = self.times
        times.events += sum(map(events_of, by_partition.values()))
        times.cpu_seconds += time.thread_time() - started_cpu
        times.seconds += time.perf_counter() - started
        return batch


def cut(batch: PendingBatch, active_days) -> DurableWrite:
    """A batch's state changes as of now: each partition's changed buckets and watermark become
    changelog sends, and its counts and progress one partials message."""
    sends = []
    for partition, state in batch.states.items():
        for bucket, users in state.activity.take_changed_buckets().items():
            key = f"{partition}|{bucket}"
            sends.append(table_set(active_days, partition, key, users) if users
                         else table_delete(active_days, partition, key))
        if state.watermark_ms:
            sends.append(table_set(active_days, partition, f"{partition}|{WATERMARK_KEY}", state.watermark_ms))
    # one message with every partition's changed counts and progress: the totals agent applies
    # all the counts before it moves the watermark, so no day is judged on half its values
    partial = {"partitions": batch.progress,
               "counts": [[p, m, a, d, c] for (p, m, a, d), c in batch.metric_counts.items()]}
    return DurableWrite(batch, sends, partial)
