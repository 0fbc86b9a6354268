"""The Faust wiring: topics, tables and agents around the pure stages of `streams.stages.flow`.

    user-actions ──▶ actions agent ──▶ ClickHouse user_actions / dead_letters
        │               │  (validate → enrich → scrub → profile join → active-user days)
        │               ├──▶ user-actions-dlq           (dead letters, scrubbed)
        │               └──▶ tally-active-user-partials (this partition's changed counts)
    user-profiles ──▶ profiles agent ──▶ profiles table (+ ClickHouse user_profiles)
    tally-active-user-partials ──▶ totals agent ──▶ active-users (compacted), alerts

The actions agent reads user-actions itself, a fetch at a time (`InputReader`), and commits each
batch once it is durable (`Batches`); Faust keeps the group, the tables and the other agents' input.

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
import time

import faust

from streams.config import Settings
from streams.runtime.batching import StageTimes, steps_by_size
from streams.runtime.continuity import InputContinuity, OffsetGuard, admit_in_order
from streams.runtime.durable import DurableWrites
from streams.runtime.flushing import Batches
from streams.runtime.health import KAFKA_CHECK_SECONDS, KAFKA_TIMEOUT_SECONDS, KafkaAnswers
from streams.runtime.kafka_internals import SelfReadingApp, producer_client, track_topics
from streams.runtime.profiles import ProfileUpdates
from streams.runtime.reader import InputReader
from streams.runtime.partitions import PartitionOwnership
from streams.runtime.steps import InputActivity, StepRunner
from streams.runtime.totals import Totals
from streams.stages.alerts import AlertEngine, load_rules
from streams.stages.enrich import load_mapping
from streams.stages.flow import Stages
from streams.stages.outcome import BatchCounts
from streams.stages.scrub import Scrubber, load_policy, scrub_logs
from streams.stages.validate import Limits
from streams.store import clickhouse, pseudonym_key
from streams.store.sink import ClickHouseWriter, RetryPolicy

log = logging.getLogger(__name__)

PARTIALS_TOPIC = "tally-active-user-partials"


class Pipeline:
    """The running worker: the Faust app, its topics, tables and agents, composed of parts with one
    job each: the input reader (`InputReader`), the stages (`Stages`), the offset guard
    (`OffsetGuard`), partition ownership (`PartitionOwnership`), the batches on their way to being
    durable (`Batches`), the totals (`Totals`) and the ClickHouse writer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts = BatchCounts()
        self.consumed_offsets: dict[int, int] = {}  # partition -> last offset processed
        self.actions_order = InputContinuity(settings.topics.user_actions)
        self.partials_order = InputContinuity(f"{settings.app_id}-{PARTIALS_TOPIC}")
        self.profiles_order = InputContinuity(settings.topics.user_profiles)
        self.ordered_topics = (self.actions_order, self.partials_order, self.profiles_order)
        self.retry = RetryPolicy()
        self.writer = ClickHouseWriter(clickhouse.connect_and_migrate(settings.clickhouse_dsn, self.retry),
                                       compression=None if settings.is_embedded_clickhouse else "zstd")
        self.scrubber = Scrubber(load_policy(settings.scrub_policy, settings.hmac_key))
        pseudonym_key.check_store(self.writer.client, self.scrubber.policy.hmac_key.decode("utf-8"))
        self.stages = Stages(Limits.from_settings(settings), load_mapping(), self.scrubber, settings.partitions)
        self.activity = InputActivity()
        self.kafka_answers = KafkaAnswers()
        self.stopped = False
        self.stage_times = StageTimes()  # for /stats/ and /metrics/
        self._tracking_client = None  # the producer's client that tracks the output topics
        self.app = self._build_app()
        self.durable = DurableWrites(settings, self.writer, self.retry, self.counts, self.consumed_offsets,
                                     self.actions_topic, self.dlq_topic, self.partials_topic)
        self.guard = OffsetGuard(self.app, settings.bootstrap)
        self.reader = InputReader(self.app, settings.topics.user_actions)
        self.batches = Batches(settings, self.durable, self.reader, self.active_days, self.app)
        self.app.before_wait_empty = self.batches.drain
        self.profile_updates = ProfileUpdates(self.profiles, self.profiles_topic, self.profiles_order, self.guard,
                                              self.stages, self.scrubber, self.writer, self.retry)
        self.ownership = PartitionOwnership(self.active_days, self.writer, settings.allowed_lateness_days,
                                            self.stages.limits.allowed_lateness_ms)
        self.steps = StepRunner(self.stages, self.ownership, self.profile_updates, self.actions_order, self.activity,
                                self.stage_times)
        self.totals = Totals(self.metric_totals, AlertEngine(load_rules(settings.alert_rules)))

    # what /stats/ and /metrics/ read
    @property
    def offset_holes(self) -> dict[str, int]:
        return self.guard.offset_holes

    @property
    def metrics_emitted(self) -> int:
        return self.totals.metrics_emitted

    @property
    def alerts(self) -> AlertEngine:
        return self.totals.alerts

    # ---- topics, tables, agents and timers on the Faust app ----------------------------------
    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust_app(s)
        topics = s.topics
        # read by the actions agent itself (`InputReader`), acked by its commits: no Faust acks to wait for
        self.actions_topic = app.topic(topics.user_actions, key_type=bytes, value_type=bytes, acks=False,
                                       key_serializer="raw", value_serializer="raw", partitions=s.partitions)
        app.self_read_topics = frozenset({topics.user_actions})
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
        self.active_days = app.Table("active_days", key_type=str, partitions=TABLES["active_days"] or s.partitions)
        self.profiles = app.Table("profiles", key_type=str, partitions=TABLES["profiles"] or s.partitions)
        self.metric_totals = app.Table("metric_totals", key_type=str, partitions=TABLES["metric_totals"])

        app.agent(self.actions_topic, name="actions")(self.actions_agent)
        app.agent(self.profiles_topic, name="profiles")(self.profiles_agent)
        app.agent(self.partials_topic, name="totals")(self.totals_agent)
        app.timer(s.metric_interval_seconds)(self.flush_metrics)
        app.timer(KAFKA_CHECK_SECONDS)(self.check_kafka)
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
        (`kafka_internals.track_topics`). Each agent and the metrics timer ask first; the first does it (again
        for a new producer)."""
        client = producer_client(self.app)
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
        await self.guard.broker_lookup.stop()

    async def on_partitions_revoked(self, sender, revoked, **kwargs) -> None:
        self.ownership.revocations += 1
        for tp in revoked:
            if tp.topic == self.settings.topics.user_actions:
                self.ownership.revoke(tp.partition)
                self.activity.forget(tp.partition)
            for order in self.ordered_topics:
                if tp.topic == order.topic:
                    order.forget(tp.partition)
        self.profile_updates.forget_index()  # rebuilt from the recovered table on the next batch

    # ---- agents ---------------------------------------------------------------------------
    async def actions_agent(self, stream) -> None:
        """Takes of about `step_bytes` or more (`InputReader`: Kafka messages a fetch at a time, not
        through `stream`, which Faust leaves empty) go through the stages (CPU, this thread) in
        steps of about `step_bytes`, so a step's fixed costs are spread over a few thousand events
        whether they come one per message or in envelopes. Steps accumulate; at `sink_batch_size`
        rows or `sink_batch_seconds`, the batch is cut and made durable (ClickHouse in an executor
        thread, Kafka sends) while the next steps run. A batch's offsets are committed once it is
        durable, so they never pass rows ClickHouse doesn't have; batches become durable one at a
        time, in order."""
        s = self.settings
        await self.track_output_topics()
        ticker = asyncio.ensure_future(self._flush_when_due())
        try:
            while True:
                # a read that finds nothing waits a tenth of a batch at most: light load goes on at once
                taken = await self.reader.take(s.take_messages, s.step_bytes, s.sink_batch_seconds / 10)
                if not taken:
                    continue
                async with self.reader.stepping:
                    await self._step_through(self.reader.still_readable(taken))
        finally:
            ticker.cancel()
            await self.batches.wait_in_flight()

    async def _step_through(self, taken: list) -> None:
        s = self.settings
        for records in steps_by_size(taken, s.step_bytes):
            partitions = {record.partition for record in records}
            await self.guard.learn_where_partitions_start(self.actions_order, partitions)
            await self.ownership.take_on(partitions)
            self.steps.run(records, self.batches.pending)
            await self.guard.keep_in_order(self.actions_order)
            await self.batches.flush_if_due()
            await asyncio.sleep(0)  # a long read must not hold up the fetcher, commits and heartbeats

    async def _flush_when_due(self) -> None:
        """A batch is cut by time too when no more input comes (a quiet stream, a rebalance or a
        shutdown waiting for its events to be acked); quiet partitions are reported idle."""
        while True:
            await asyncio.sleep(self.settings.sink_batch_seconds / 4)
            for order in self.ordered_topics:
                await self.guard.keep_in_order(order)
            if self.batches.is_due() and not self.batches.flying:
                self.batches.cut_and_flush()
            try:
                await self._report_idle_partitions()
            except Exception as exc:  # only the alerts' clock waits for the next try: keep cutting batches
                log.warning("could not report idle partitions: %r", exc)
            try:
                if not self.batches.busy and time.monotonic() - self.activity.last_step >= 2.0:
                    await self.guard.catch_stalled_partitions(self.actions_order)
            except Exception as exc:
                log.warning("could not look for stalled input partitions: %r", exc)

    async def _report_idle_partitions(self) -> None:
        """Input partitions that are caught up and have had nothing new for `idle_partition_seconds`
        go to the totals agent as idle, so they stop holding back the alerts' clock (the usual
        idle-source problem of event time). Their next data makes them count again."""
        if self.stopped or self.batches.busy:
            return
        idle = self.activity.quiet_partitions(self.app.consumer, self.settings.topics.user_actions,
                                              self.consumed_offsets, self.settings.idle_partition_seconds)
        if idle:
            partial = {"partitions": {p: {"idle": True} for p in idle}, "counts": []}
            await self.partials_topic.send(key=b"counts", value=json.dumps(partial).encode())
            self.activity.reported_idle.update(idle)

    async def profiles_agent(self, stream) -> None:
        await self.track_output_topics()
        await self.profile_updates.take(stream)

    async def totals_agent(self, stream) -> None:
        """Sums the partitions' counts into exact totals (`Totals`)."""
        order = self.partials_order
        await self.track_output_topics()
        async for event in stream.events():
            await self.guard.learn_where_partitions_start(order, {event.message.partition})
            taken = admit_in_order(order, event.message)
            await self.guard.keep_in_order(order)
            if taken:
                await asyncio.gather(*self.totals.apply(json.loads(event.value), event.message.partition))

    async def flush_metrics(self) -> None:
        """At most one MetricUpdate per key per interval: the latest value wins."""
        if self.stopped:
            return
        await self.track_output_topics()
        await self.totals.publish(self.metrics_topic, self.alerts_topic)

    async def check_kafka(self) -> None:
        """A metadata request on the worker's producer client: does Kafka answer (for /readyz/)?"""
        try:
            ok = await asyncio.wait_for(producer_client(self.app).force_metadata_update(), KAFKA_TIMEOUT_SECONDS)
        except Exception:
            ok = False
        if not ok and self.kafka_answers.ok:
            log.warning("Kafka did not answer a metadata request within %.0f s: not ready", KAFKA_TIMEOUT_SECONDS)
        elif ok and not self.kafka_answers.ok:
            log.info("Kafka answers again")
        self.kafka_answers.answered(bool(ok))

    # ---- views for the web endpoint ---------------------------------------------------------
    def owns_totals(self) -> bool:
        """Whether this worker holds the totals (the partials topic's one partition)."""
        return any(tp.topic == self.partials_topic.get_topic_name() for tp in self.app.consumer.assignment())

    def current_totals(self, metric: str | None = None, app: str | None = None) -> list[dict]:
        """The exact totals, from the worker that owns them; [] on the others (their copy may be stale)."""
        return self.totals.current(metric, app) if self.owns_totals() else []


def faust_app(s: Settings) -> SelfReadingApp:
    """The worker's Faust app: its group, broker settings and web endpoint; no topics yet."""
    return SelfReadingApp(
        s.app_id,
        broker=f"kafka://{s.bootstrap}",
        store="memory://",
        datadir=str(s.data_dir / "faust"),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
        producer_acks=-1,  # acks=all: a send is kept by every in-sync replica (2 of 3 on a cluster)
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


TABLES = {"active_days": None, "profiles": None, "metric_totals": 1}  # table -> partitions (None: the input's)


def internal_topics(settings: Settings) -> tuple[dict[str, int], set[str]]:
    """The worker's own topics (the partials, the tables' changelogs) with their partition counts,
    named as Faust names them, to create before Faust starts: a producer's metadata request would
    otherwise create one first with the broker's default count, and a changelog with fewer
    partitions than the table breaks the first send to a missing one."""
    counts = {f"{settings.app_id}-{PARTIALS_TOPIC}": 1}
    changelogs = {f"{settings.app_id}-{table}-changelog": n or settings.partitions for table, n in TABLES.items()}
    return {**counts, **changelogs}, set(changelogs)


def create_app(settings: Settings) -> Pipeline:
    return Pipeline(settings)
