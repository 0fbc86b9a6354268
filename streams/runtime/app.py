"""The Faust wiring: topics, tables and agents around the pure stages of `streams.stages.flow`.

    user-actions ──▶ actions agent ──▶ ClickHouse user_actions / dead_letters
        │               │  (validate → enrich → scrub → profile join → active-user days)
        │               ├──▶ user-actions-dlq           (dead letters, scrubbed)
        │               └──▶ tally-active-user-partials (this partition's changed counts)
    user-profiles ──▶ profiles agent ──▶ profiles table (+ ClickHouse user_profiles)
    tally-active-user-partials ──▶ totals agent ──▶ active-users (compacted), alerts

Tables (memory store, restored from their Kafka changelogs on start):
    active_days     "<partition>|<bucket>" -> [app, user, active day ordinals] of a bucket of users
                    (rewritten at most once per batch, when one of them gained a day)
    profiles        "<user>" -> scrubbed profile
    metric_totals   "<metric>|<app>|<day>" -> per-partition counts, total, version
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import faust
from faust.types import TP

from streams.store import clickhouse
from streams.stages.active_users import PartitionActivity, day_iso, day_ordinal, merge_partition_count
from streams.stages.alerts import AlertEngine, StreamClock, load_rules
from streams.ops.broker import track_topics
from streams.config import Settings
from streams.contract import Alert, DeadLetter, MetricUpdate, UserProfile
from streams.stages.enrich import SESSION_GAP_MS, load_mapping
from streams.stages.outcome import REFUSED_BY_STORE, BatchCounts, Source
from streams.stages.flow import PartitionState, Stages, partition_for_user, process_batch, refused_row_letter, unpack
from streams.stages.scrub import Scrubber, load_policy, scrub_logs
from streams.store.sink import (DEAD_LETTER_COLUMNS, PROFILE_COLUMNS, USER_ACTION_COLUMNS, ClickHouseWriter, RetryPolicy,
                   batch_token, dead_letter_row, insert_isolating, to_columns)
from streams.stages.validate import Limits

log = logging.getLogger(__name__)

PARTIALS_TOPIC = "tally-active-user-partials"
WATERMARK_KEY = "~watermark"


@dataclass
class StageTimes:
    """Time the actions agent spends in the stages (unpack, validate to count) on the event loop's
    thread: its CPU and wall clock. Beside the sink's insert times, where a worker's time goes."""
    events: int = 0
    cpu_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class PendingBatch:
    """Steps of the input that went through the stages and wait to be made durable together: rows
    accumulate across steps up to one insert's worth, whatever the steps' sizes in messages."""
    started: float = 0.0                                      # monotonic time of its first step
    events: list = field(default_factory=list)                # Faust events, acked once durable
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (first, last) offset
    columns: dict[str, list] = field(default_factory=dict)   # the rows for user_actions, column by column
    row_count: int = 0
    letters: list[DeadLetter] = field(default_factory=list)
    reroutes: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    states: dict[int, PartitionState] = field(default_factory=dict)  # whose changes to persist
    metric_counts: dict[tuple, int] = field(default_factory=dict)    # (partition, metric, app, day) -> latest
    progress: dict[int, dict] = field(default_factory=dict)          # partition -> watermark etc., latest
    counts: BatchCounts = field(default_factory=BatchCounts)

    def add_rows(self, columns: dict[str, list]) -> None:
        """Add a step's rows. The first step's columns are copied: a step may hold one list under two
        names (`ts` and `start_epoch_ms`), which extending in place would grow twice."""
        if not self.columns:
            self.columns = {name: list(values) for name, values in columns.items()}
        else:
            for name, values in columns.items():
                self.columns[name].extend(values)
        self.row_count += len(columns["event_id"]) if columns else 0


@dataclass
class DurableWrite:
    """A pending batch at the moment it is cut: what its flush writes and sends."""
    batch: PendingBatch
    sends: list  # futures of changelog writes, made when the batch was cut
    partial: dict


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
        from aiokafka import AIOKafkaConsumer, TopicPartition
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
    message.acked = True
    return False


def message_bytes(event) -> int:
    return len(event.message.value or b"")


def steps_by_size(events: list, step_bytes: int, size_of=message_bytes) -> list[list]:
    """Consecutive runs of `events`, each ending at the first message that brings it to `step_bytes`."""
    steps, step, size = [], [], 0
    for event in events:
        step.append(event)
        size += size_of(event)
        if size >= step_bytes:
            steps.append(step)
            step, size = [], 0
    if step:
        steps.append(step)
    return steps


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


class Pipeline:
    """The running worker's objects: Faust app, stages, per-partition state and counters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts = BatchCounts()
        self.consumed_offsets: dict[int, int] = {}  # partition -> last offset processed
        self.actions_order = InputContinuity(settings.topics.user_actions)
        self.partials_order = InputContinuity(f"{settings.app_id}-{PARTIALS_TOPIC}")
        self.profiles_order = InputContinuity(settings.topics.user_profiles)
        self.ordered_topics = (self.actions_order, self.partials_order, self.profiles_order)
        self.hole_checks: set[asyncio.Task] = set()
        self.offset_holes = {"reread": 0, "passed": 0}  # for /stats/ and /metrics/
        self.broker_lookup = BrokerLookup(settings.bootstrap)
        self.retry = RetryPolicy()
        self.writer = ClickHouseWriter(clickhouse.connect_and_migrate(settings.clickhouse_dsn, self.retry),
                                       compression=None if settings.is_embedded_clickhouse else "zstd")
        self.scrubber = Scrubber(load_policy(settings.scrub_policy, settings.hmac_key))
        self.stages = Stages(Limits.from_settings(settings), load_mapping(), self.scrubber, settings.partitions)
        self.alerts = AlertEngine(load_rules(settings.alert_rules))
        self.partition_states: dict[int, PartitionState] = {}
        self.revocations = 0  # rebalances that took partitions away, so far
        self._profile_index: dict[str, dict] | None = None  # plain-dict view of the profiles table
        self.pending_metrics: dict[str, dict] = {}
        self.stream_clock = StreamClock()  # the input partitions' event time, for alerts
        self.newest_event_ms: dict[str, int] = {}  # app -> its newest event time, for alerts
        self.last_input: dict[int, float] = {}  # input partition -> monotonic time of its last message
        self.last_step = time.monotonic()  # when the actions agent last took messages
        self.stall_checked: dict[int, int] = {}  # input partition -> the highwater it was last checked at
        self.reported_idle: set[int] = set()
        self.started = time.monotonic()
        self.pending_alerts: list[Alert] = []
        self.metrics_emitted = 0
        self.stopped = False
        self.pending = PendingBatch()
        self.stage_times = StageTimes()  # for /stats/ and /metrics/
        self.in_flight: asyncio.Task | None = None
        self._actions_stream = None
        self._tracking_client = None  # the producer's client that tracks the output topics
        self.app = self._build_app()

    # ---- Faust app ------------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=f"kafka://{s.bootstrap}",
            store="memory://",
            datadir=str(s.data_dir / "faust"),
            topic_partitions=s.partitions,
            topic_replication_factor=1,
            consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=max(4096, s.take_messages * 2),
            broker_max_poll_records=max(500, s.take_messages),  # fewer hops to the consumer thread
            consumer_max_fetch_size=16 * 1024 * 1024,
            broker_commit_every=max(1000, s.take_messages),
            broker_commit_interval=1.0,
            producer_linger_ms=5,
            producer_max_request_size=4 * 1024 * 1024,
            web_enabled=True,
            web_bind=s.web_bind,
            web_host=socket.gethostname() if s.web_bind == "0.0.0.0" else s.web_bind,  # the URL it tells the group
            web_port=s.web_port,
            web_in_thread=False,
            table_standby_replicas=0,
            logging_config=None,
        )
        topics = s.topics
        self.actions_topic = app.topic(topics.user_actions, key_type=bytes, value_type=bytes,
                                       key_serializer="raw", value_serializer="raw", partitions=s.partitions)
        self.profiles_topic = app.topic(topics.user_profiles, key_type=bytes, value_type=bytes,
                                        key_serializer="raw", value_serializer="raw", partitions=s.partitions)
        self.dlq_topic = app.topic(topics.dead_letters, key_serializer="raw", value_serializer="raw",
                                   partitions=s.partitions)
        self.metrics_topic = app.topic(topics.active_users, key_serializer="raw", value_serializer="raw",
                                       partitions=1)
        self.alerts_topic = app.topic(topics.alerts, key_serializer="raw", value_serializer="raw", partitions=1)
        self.partials_topic = app.topic(f"{s.app_id}-{PARTIALS_TOPIC}", value_type=bytes, key_serializer="raw",
                                        value_serializer="raw", partitions=1, internal=True)

        # str keys, JSON values (lists of day ordinals, small dicts)
        self.active_days = app.Table("active_days", key_type=str, partitions=s.partitions)
        self.profiles = app.Table("profiles", key_type=str, partitions=s.partitions)
        self.metric_totals = app.Table("metric_totals", key_type=str, partitions=1)

        app.agent(self.actions_topic, name="actions")(self.actions_agent)
        app.agent(self.profiles_topic, name="profiles")(self.profiles_agent)
        app.agent(self.partials_topic, name="totals")(self.totals_agent)
        app.timer(s.metric_interval_seconds)(self.flush_metrics)
        app.task(self.install_log_scrubbing)
        app.on_partitions_revoked.connect(self.on_partitions_revoked)
        app.on_before_shutdown.connect(self.on_shutdown)
        from streams.runtime import web
        web.register(app, self)
        return app

    def output_topics(self) -> list[str]:
        """Every topic the worker writes to: its outputs and its tables' changelogs."""
        topics = (self.actions_topic, self.dlq_topic, self.metrics_topic, self.alerts_topic, self.partials_topic)
        tables = (self.active_days, self.profiles, self.metric_totals)
        return [t.get_topic_name() for t in topics] + [t.changelog_topic.get_topic_name() for t in tables]

    async def track_output_topics(self) -> None:
        """Before the worker's first send, so no metadata refresh forgets a topic it writes to
        (`broker.track_topics`). Each agent and the metrics timer ask first; the first does it (again
        for a new producer)."""
        client = self.app.producer._ensure_producer().client  # Faust's aiokafka producer (internal)
        if client is not self._tracking_client:
            await track_topics(client, self.output_topics())
            self._tracking_client = client

    async def install_log_scrubbing(self) -> None:
        """Log lines pass the same policy as stored rows (once the worker has set up its handlers)."""
        scrub_logs(self.scrubber)

    async def on_shutdown(self, sender, **kwargs) -> None:
        """A clean stop publishes the metric values and alerts still waiting for their interval."""
        await self.flush_metrics()
        self.stopped = True  # the producer stops next: the interval timer must not send any more
        await self.broker_lookup.stop()

    async def on_partitions_revoked(self, sender, revoked, **kwargs) -> None:
        self.revocations += 1
        for tp in revoked:
            if tp.topic == self.settings.topics.user_actions:
                self.partition_states.pop(tp.partition, None)
                self.reported_idle.discard(tp.partition)  # its next owner reports it
            for order in self.ordered_topics:
                if tp.topic == order.topic:
                    order.forget(tp.partition)
        self._profile_index = None  # rebuilt from the recovered table on the next batch

    # ---- per-partition state --------------------------------------------------------------
    def state_for(self, partition: int) -> PartitionState:
        """This partition's state, rebuilt the first time (`_take_on_partitions` does that before a
        step, reading ClickHouse off the event loop; this is for a partition it could not)."""
        state = self.partition_states.get(partition)
        if state is None:
            state = self._recovered_state(partition)
            if state.watermark_ms:
                state.open_sessions = self._stored_open_sessions(partition, state.watermark_ms)
            self.partition_states[partition] = state
        return state

    async def _take_on_partitions(self, partitions: set[int]) -> None:
        """State for each input partition first seen since its assignment, before its first step:
        the sessions its previous owner left open are read back in a thread, since the read waits
        for any insert in flight."""
        for partition in partitions - self.partition_states.keys():
            state = self._recovered_state(partition)
            if state.watermark_ms:
                revocations = self.revocations
                sessions = await asyncio.get_running_loop().run_in_executor(
                    None, self._stored_open_sessions, partition, state.watermark_ms)
                if revocations != self.revocations or partition in self.partition_states:
                    continue  # a rebalance meanwhile: what was read may be another owner's
                state.open_sessions = sessions
            self.partition_states[partition] = state

    def _recovered_state(self, partition: int) -> PartitionState:
        """A partition's active days and watermark from the recovered active_days table."""
        state = PartitionState(PartitionActivity(self.settings.allowed_lateness_days))
        prefix = f"{partition}|"
        persisted = []
        for key, value in list(self.active_days.data.items()):
            if not key.startswith(prefix):
                continue
            if key == prefix + WATERMARK_KEY:
                state.watermark_ms = int(value)
            else:
                persisted.extend(value)  # [app, user, days] of each user in the bucket
        state.activity.restore(persisted, day_ordinal(state.watermark_ms) if state.watermark_ms else 0)
        return state

    def _stored_open_sessions(self, partition: int, watermark_ms: int) -> dict[str, tuple[str, int, int]]:
        """The sessions a partition's previous owner left open, read back from its stored rows (once,
        when the partition is taken on). Without them a restart would split sessions in two."""
        since = watermark_ms - self.stages.limits.allowed_lateness_ms - SESSION_GAP_MS
        try:
            return self.writer.open_sessions(partition, since)
        except Exception as exc:  # sessions then restart here; nothing else depends on them
            log.warning("could not read the open sessions of input partition %d: %r", partition, exc)
            return {}

    def profile_index(self) -> dict[str, dict]:
        """Profiles by stored user id as a plain dict: the table's store decodes JSON on every read,
        which the join would otherwise pay per event."""
        if self._profile_index is None:
            self._profile_index = dict(self.profiles.data.items())
        return self._profile_index

    # ---- agents ---------------------------------------------------------------------------
    async def actions_agent(self, stream) -> None:
        """Takes of up to `take_messages` Kafka messages go through the stages (CPU, this thread) in
        steps of about `step_bytes`, so a step's fixed costs are spread over a few thousand events
        whether they come one per message or in envelopes. Steps accumulate; at `sink_batch_size`
        rows or `sink_batch_seconds`, the batch is cut and made durable (ClickHouse in an executor
        thread, Kafka sends) while the next steps run. Events are acked by hand once their batch is
        durable, so offsets never pass rows ClickHouse doesn't have; batches become durable one at
        a time, in order."""
        s = self.settings
        self._actions_stream = stream
        await self.track_output_topics()
        ticker = asyncio.ensure_future(self._flush_when_due())
        try:
            # a take that does not fill waits a tenth of a batch at most: light load goes on at once
            async for taken in stream.noack_take(s.take_messages, within=s.sink_batch_seconds / 10):
                for events in steps_by_size(taken, s.step_bytes):
                    partitions = {event.message.partition for event in events}
                    await self._learn_where_partitions_start(self.actions_order, partitions)
                    await self._take_on_partitions(partitions)
                    self.run_stages(events, self.pending)
                    await self._keep_in_order(self.actions_order)
                    if self.pending.row_count >= s.sink_batch_size or self._pending_is_due():
                        while self.in_flight is not None and not self.in_flight.done():
                            await self.in_flight  # at most one batch in flight: backpressure
                        self._cut_and_flush()
                    await asyncio.sleep(0)  # a long take must not hold up the fetcher, acks and heartbeats
        finally:
            ticker.cancel()
            if self.in_flight is not None and not self.in_flight.done():
                await self.in_flight

    def _pending_is_due(self) -> bool:
        return bool(self.pending.events) and time.monotonic() - self.pending.started >= self.settings.sink_batch_seconds

    async def _flush_when_due(self) -> None:
        """A batch is cut by time too when no more input comes (a quiet stream, a rebalance or a
        shutdown waiting for its events to be acked); quiet partitions are reported idle."""
        while True:
            await asyncio.sleep(self.settings.sink_batch_seconds / 4)
            for order in self.ordered_topics:
                await self._keep_in_order(order)
            if self._pending_is_due() and (self.in_flight is None or self.in_flight.done()):
                self._cut_and_flush()
            try:
                await self._report_idle_partitions()
            except Exception as exc:  # only the alerts' clock waits for the next try: keep cutting batches
                log.warning("could not report idle partitions: %r", exc)
            try:
                await self._catch_stalled_partitions()
            except Exception as exc:
                log.warning("could not look for stalled input partitions: %r", exc)

    async def _report_idle_partitions(self) -> None:
        """Input partitions that are caught up and have had nothing new for `idle_partition_seconds`
        go to the totals agent as idle, so they stop holding back the alerts' clock (the usual
        idle-source problem of event time). Their next data makes them count again."""
        if self.stopped or self.pending.events or (self.in_flight is not None and not self.in_flight.done()):
            return
        consumer = self.app.consumer
        quiet_since = time.monotonic() - self.settings.idle_partition_seconds
        idle = []
        for tp in consumer.assignment():
            partition = tp.partition
            if (tp.topic != self.settings.topics.user_actions or partition in self.reported_idle
                    or self.last_input.get(partition, self.started) > quiet_since):
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if high is not None and self.consumed_offsets.get(partition, -1) + 1 >= high:
                idle.append(partition)
        if idle:
            partial = {"partitions": {p: {"idle": True} for p in idle}, "counts": []}
            await self.partials_topic.send(key=b"counts", value=json.dumps(partial).encode())
            self.reported_idle.update(idle)

    def _cut_and_flush(self) -> None:
        """Cut the pending batch. Its state changes are snapshotted here, synchronously, before any
        later step can run: each partition's changed buckets and watermark become changelog sends,
        and its counts and progress one partials message."""
        if not self.pending.events:  # the ticker cut it while this waited
            return
        batch, self.pending = self.pending, PendingBatch()
        sends = []
        for partition, state in batch.states.items():
            for bucket, users in state.activity.take_changed_buckets().items():
                key = f"{partition}|{bucket}"
                sends.append(table_set(self.active_days, partition, key, users) if users
                             else table_delete(self.active_days, partition, key))
            if state.watermark_ms:
                sends.append(table_set(self.active_days, partition, f"{partition}|{WATERMARK_KEY}",
                                       state.watermark_ms))
        # one message with every partition's changed counts and progress: the totals agent applies
        # all the counts before it moves the watermark, so no day is judged on half its values
        partial = {"partitions": batch.progress,
                   "counts": [[p, m, a, d, c] for (p, m, a, d), c in batch.metric_counts.items()]}
        self.in_flight = asyncio.ensure_future(self._make_durable_and_ack(DurableWrite(batch, sends, partial)))

    async def _make_durable_and_ack(self, write: DurableWrite) -> None:
        try:
            await self.make_durable(write)
        except Exception as exc:
            # The partition state already holds this batch, so carrying on would take its
            # redelivered events for duplicates. Stop the worker instead; a restart rebuilds the
            # state from what was made durable.
            log.critical("batch failed, stopping the worker: %r", exc)
            await self.app.crash(exc)
            raise
        for event in write.batch.events:
            await self._actions_stream.ack(event)

    async def _learn_where_partitions_start(self, continuity: InputContinuity, partitions: set[int]) -> None:
        """Where each partition first seen since its assignment starts, asked of the broker: its
        committed offset, else (a new group reads from the earliest) its first record. Faust can
        deliver messages before its own seek to the committed offsets has finished."""
        for partition in partitions - continuity.expected.keys():
            try:
                continuity.start(partition, await self._where_partition_starts(TP(continuity.topic, partition)))
            except Exception as exc:  # then the partition starts wherever its first message is
                log.warning("could not read where %s partition %d starts: %r", continuity.topic, partition, exc)

    async def _where_partition_starts(self, tp: TP) -> int | None:
        """The group's committed offset, else (a new group reads from the earliest) the first record."""
        start = await self._in_consumer_thread("committed", tp)
        return start if start is not None else await self.broker_lookup.first_offset(tp.topic, tp.partition, 0)

    async def _in_consumer_thread(self, method: str, *args):
        """Call a method of Faust's aiokafka consumer in the thread that consumer lives in."""
        thread = self.app.consumer._thread
        return await thread.call_thread(getattr(thread._ensure_consumer(), method), *args)

    async def _keep_in_order(self, continuity: InputContinuity) -> None:
        """Seek partitions back to their holes, and clear Faust's record of gaps from a hole on, so
        its commits wait for the re-read messages (`_gap`: Faust's internal)."""
        for partition, (hole, seen) in continuity.to_check.items():
            check = asyncio.ensure_future(self._check_hole(continuity, partition, hole, seen))
            self.hole_checks.add(check)
            check.add_done_callback(self.hole_checks.discard)
        continuity.to_check.clear()
        seeks = continuity.take_seeks(time.monotonic(), retry_after=1.0)
        if not (seeks or continuity.resolved):
            return
        consumer, topic = self.app.consumer, continuity.topic
        for partition in continuity.resolved:
            consumer._gap[TP(topic, partition)].chop(continuity.expected[partition] - 1, sys.maxsize)
        continuity.resolved.clear()
        assigned = consumer.assignment()
        for partition, hole in seeks.items():
            tp = TP(topic, partition)
            if tp not in assigned:  # a stale message of a partition revoked since: its owner re-reads it
                continuity.forget(partition)
                continue
            consumer._gap[tp].chop(hole, sys.maxsize)
            try:
                # in the aiokafka consumer's own thread: its seek wakes that thread's fetch task, which a
                # seek from this thread (Faust's Consumer.seek) can leave asleep; then what Faust's
                # seek does besides, so its fetch loop takes the re-read messages
                await self._in_consumer_thread("seek", tp, hole)
                consumer._read_offset[tp] = hole or None
            except Exception as exc:  # e.g. revoked meanwhile; an open hole is sought again later
                log.warning("could not seek %s partition %d back to %d: %r", topic, partition, hole, exc)

    async def _catch_stalled_partitions(self, idle_seconds: float = 2.0) -> None:
        """With the agent idle, an input partition whose broker has records past the offset the agent
        expects next is a hole with nothing after it, which no later message can reveal: seen when
        Faust dropped a partition's whole backlog at a restart. It is checked and re-read as any hole
        (once per highwater, so an idle partition ending in a transaction marker is looked up once)."""
        if (time.monotonic() - self.last_step < idle_seconds or self.pending.events
                or (self.in_flight is not None and not self.in_flight.done())):
            return
        order, consumer = self.actions_order, self.app.consumer
        for tp in consumer.assignment():
            partition = tp.partition
            if tp.topic != order.topic or partition in order.rewinds or partition in order.to_seek:
                continue
            high = consumer.highwater(tp)
            if not high or self.stall_checked.get(partition) == high:
                continue
            expected = order.expected.get(partition)
            if expected is None:
                expected = await self._where_partition_starts(tp)
            if expected is None or expected >= high:
                continue
            self.stall_checked[partition] = high
            order.suspect_hole(partition, expected, high)
        await self._keep_in_order(order)

    async def _check_hole(self, continuity: InputContinuity, partition: int, hole: int, seen: int) -> None:
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
                await self.app.consumer._add_gap(TP(topic, partition), hole, first - 1)
            return

    def run_stages(self, events, batch: PendingBatch) -> PendingBatch:
        """The CPU part of a step: every partition's messages through `process_batch`, the results
        added to `batch`."""
        started, started_cpu = time.perf_counter(), time.thread_time()
        by_partition: dict[int, list] = defaultdict(list)
        offsets = batch.offsets
        now_ms = int(time.time() * 1000)
        if not batch.events:
            batch.started = time.monotonic()  # a batch's age counts from its first event
        order = self.actions_order
        for event in events:
            message = event.message
            if not admit_in_order(order, message):
                continue
            batch.events.append(event)
            source = Source(message.topic, message.partition, message.offset, len(message.value or b""))
            items, bad_envelope = unpack(message.value, message.headers, source, self.stages, now_ms)
            by_partition[message.partition].extend(items)
            if bad_envelope is not None:
                batch.letters.append(bad_envelope)
                batch.counts.count_dead_letter(bad_envelope.reason)
            low, _ = offsets.get(message.partition, (message.offset, message.offset))
            offsets[message.partition] = (low, message.offset)

        step_time = self.last_step = time.monotonic()
        for partition, messages in by_partition.items():  # every partition with a message in this step
            self.last_input[partition] = step_time
            self.reported_idle.discard(partition)
            state = batch.states[partition] = self.state_for(partition)
            result = process_batch(messages, state, self.stages, self.profile_index())
            batch.add_rows(result.columns)
            batch.letters.extend(result.dead_letters)
            batch.reroutes.extend(result.reroutes)
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
        times = self.stage_times
        times.events += sum(map(len, by_partition.values()))
        times.cpu_seconds += time.thread_time() - started_cpu
        times.seconds += time.perf_counter() - started
        return batch

    async def make_durable(self, write: DurableWrite) -> None:
        """The I/O part: rows and dead letters into ClickHouse, then every message out and acknowledged
        by the broker."""
        batch, sends = write.batch, write.sends
        for key, value, target in batch.reroutes:
            sends.append(await self.actions_topic.send(key=key, value=value, partition=target))
        token = batch_token(self.settings.topics.user_actions, batch.offsets)
        refused = await insert_isolating(self.writer, "user_actions", batch.columns, USER_ACTION_COLUMNS, token,
                                         self.retry)
        letters = batch.letters + self._refused_rows_as_letters(batch, refused) if refused else batch.letters
        if letters:
            letter_rows = [dead_letter_row(letter) for letter in letters]
            kept_out = await insert_isolating(self.writer, "dead_letters", to_columns(letter_rows, DEAD_LETTER_COLUMNS),
                                              DEAD_LETTER_COLUMNS, token, self.retry)
            for index, why in kept_out:
                log.error("ClickHouse refused the dead letter of %s/%d/%d (%s); it is in the %s topic only: %s",
                          letters[index].source_topic, letters[index].source_partition, letters[index].source_offset,
                          letters[index].reason, self.settings.topics.dead_letters, why)
            for letter in letters:
                sends.append(await self.dlq_topic.send(key=letter.reason.encode(), value=letter.SerializeToString()))
        if write.partial["partitions"]:
            sends.append(await self.partials_topic.send(key=b"counts", value=json.dumps(write.partial).encode()))
        await asyncio.gather(*sends)
        self.counts.add(batch.counts)  # counted once stored and sent: what /stats reports is durable
        for partition, (_, high) in batch.offsets.items():
            self.consumed_offsets[partition] = high

    def _refused_rows_as_letters(self, batch: PendingBatch, refused: list[tuple[int, str]]) -> list[DeadLetter]:
        """Rows ClickHouse refused become dead letters instead: counted as such, and forgotten as
        taken, so their replay is stored rather than taken for a duplicate."""
        columns, now_ms = batch.columns, int(time.time() * 1000)
        letters = []
        for index, why in refused:
            row = {name: values[index] for name, values in columns.items()}
            letters.append(refused_row_letter(row, why, self.settings.topics.user_actions, now_ms))
            batch.states[row["kafka_partition"]].recent_ids.forget(row["event_id"])
            batch.counts.delivered -= 1
            batch.counts.count_dead_letter(REFUSED_BY_STORE)
        log.error("ClickHouse refused %d of %d rows (first: %s); they are dead letters (%s), the rest is stored",
                  len(refused), batch.row_count, refused[0][1], REFUSED_BY_STORE)
        return letters

    async def profiles_agent(self, stream) -> None:
        order = self.profiles_order
        await self.track_output_topics()
        async for events in stream.take_events(1000, within=0.5):
            await self._learn_where_partitions_start(order, {event.message.partition for event in events})
            rows, sends = [], []
            for event in events:
                if not admit_in_order(order, event.message):
                    continue  # re-read in order after the hole: a profile is the user's latest
                profile = UserProfile()
                try:
                    profile.ParseFromString(event.message.value or b"")
                except Exception:
                    log.warning("undecodable profile at %s/%s", event.message.partition, event.message.offset)
                    continue
                if not profile.user:
                    continue
                self.scrubber.scrub_profile(profile)
                expected_partition = partition_for_user(profile.user, self.settings.partitions)
                if event.message.partition != expected_partition:  # join where that user's events are
                    sends.append(await self.profiles_topic.send(key=profile.user.encode(), value=event.message.value,
                                                                partition=expected_partition))
                    continue
                value = {"email": profile.email, "title": profile.title, "team": profile.team,
                         "ab_flags": dict(profile.ab_flags)}
                sends.append(table_set(self.profiles, event.message.partition, profile.user, value))
                self.profile_index()[profile.user] = value
                rows.append({"user": profile.user, "updated_at": profile.updated_epoch_ms or int(time.time() * 1000),
                             **value})
            token = f"profiles:{events[0].message.partition}@{events[0].message.offset}:{len(events)}" if events else ""
            refused = await insert_isolating(self.writer, "user_profiles", to_columns(rows, PROFILE_COLUMNS),
                                             PROFILE_COLUMNS, token, self.retry)
            for index, why in refused:  # the join has it still; only the analysts' copy lacks it
                log.error("ClickHouse refused the profile of %s: %s", rows[index]["user"], why)
            await asyncio.gather(*sends)
            await self._keep_in_order(order)

    async def totals_agent(self, stream) -> None:
        """Sums the partitions' counts into exact totals (the partials topic has one partition, so
        one worker owns every total and the alert rules see them all)."""
        order = self.partials_order
        await self.track_output_topics()
        async for event in stream.events():
            # partials apply idempotently (each count is a partition's latest): a re-read is harmless
            await self._learn_where_partitions_start(order, {event.message.partition})
            taken = admit_in_order(order, event.message)
            await self._keep_in_order(order)
            if not taken:
                continue
            partial = json.loads(event.value)
            progress = partial["partitions"]  # JSON keys: partition numbers as strings
            sends = []
            for partition, info in progress.items():
                if info.get("idle"):
                    self.stream_clock.mark_idle(partition)
                    continue
                self.stream_clock.advance(partition, info["watermark_ms"])
                for app, ms in info["newest_event_ms"].items():
                    self.newest_event_ms[app] = max(ms, self.newest_event_ms.get(app, 0))
            now_ms = max((p["watermark_ms"] for p in progress.values() if not p.get("idle")), default=0)
            for partition, metric, app, day, count in partial["counts"]:
                partition = str(partition)
                key = f"{metric}|{app}|{day_iso(day)}"
                entry = self.metric_totals.get(key) or {"parts": {}, "value": 0, "version": 0}
                if not merge_partition_count(entry["parts"], partition, count):
                    continue
                total = entry["value"] = sum(entry["parts"].values())
                entry["version"] += 1
                entry["correction"] = day < progress[partition]["watermark_day"]
                entry["updated_ms"] = now_ms
                sends.append(table_set(self.metric_totals, event.message.partition, key, entry))
                self.pending_metrics[key] = entry
                self.pending_alerts.extend(self.alerts.on_metric(metric, app, day_iso(day), total, now_ms))
            stream_now = self.stream_clock.now_ms()
            if stream_now is not None:
                for app, ms in self.newest_event_ms.items():
                    self.pending_alerts.extend(self.alerts.on_event_time(app, min(ms, stream_now)))
            await asyncio.gather(*sends)

    async def flush_metrics(self) -> None:
        """At most one MetricUpdate per key per interval: the latest value wins."""
        if self.stopped:
            return
        await self.track_output_topics()
        pending, self.pending_metrics = self.pending_metrics, {}
        for key, entry in pending.items():
            metric, app, day = key.split("|")
            update = MetricUpdate(metric=metric, app=app, day=day, value=entry["value"], version=entry["version"],
                                  updated_epoch_ms=entry.get("updated_ms", 0), correction=entry.get("correction", False))
            await self.metrics_topic.send(key=key.encode(), value=update.SerializeToString())
        self.metrics_emitted += len(pending)
        alerts, self.pending_alerts = self.pending_alerts, []
        for alert in alerts:
            await self.alerts_topic.send(key=f"{alert.rule}|{alert.app}".encode(), value=alert.SerializeToString())

    # ---- views for the web endpoint ---------------------------------------------------------
    def owns_totals(self) -> bool:
        """Whether this worker holds the totals (the partials topic's one partition)."""
        return any(tp.topic == self.partials_topic.get_topic_name() for tp in self.app.consumer.assignment())

    def current_totals(self, metric: str | None = None, app: str | None = None) -> list[dict]:
        """The exact totals, from the worker that owns them; [] on the others (their copy may be stale)."""
        if not self.owns_totals():
            return []
        rows = []
        for key, entry in list(self.metric_totals.data.items()):
            m, a, day = key.split("|")
            if (metric and m != metric) or (app and a != app):
                continue
            rows.append({"metric": m, "app": a, "day": day, "value": entry["value"], "version": entry["version"]})
        return sorted(rows, key=lambda r: (r["metric"], r["app"], r["day"]))


def create_app(settings: Settings) -> Pipeline:
    return Pipeline(settings)
