"""What users of the pipeline rely on, checked through the real broker and real worker processes:
nothing lost, nothing counted twice, event time everywhere, secrets never stored."""
import asyncio
import datetime as dt
import json
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from conftest import publish, read_topic
from streams.runtime.app import PARTIALS_TOPIC, Pipeline
from streams.ops.broker import create_topics
from streams.runtime.kafka_internals import track_topics
from streams.config import Settings, Topics
from streams.contract import Alert, DeadLetter, MetricUpdate, UserAction
from test_end_to_end import DAY_MS, committed, committed_offsets, expected_metrics, make_actions, send, wait_for, wait_for_metrics

pytestmark = pytest.mark.kafka

SECRET = "hunter2-Very-Secret"
GARBAGE = b"\x00\xffnot protobuf"


def test_every_topic_the_worker_writes_to_survives_a_metadata_refresh_for_another(bootstrap, ch_dsn, tmp_path):
    """aiokafka refreshes metadata only for the topics it tracks, and a send to a topic it knows
    from an all-topics refresh does not track it: the next refresh made for another topic forgets
    it, and its batches wait for a leader until they expire. A worker was seen so with its first
    dead letters unsent and their batch never acked (this file's bad-input test, 2 of ~50 looped
    runs). The worker tracks every topic it writes to before its first send; here its list, on a
    producer in that state."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    settings = Settings(bootstrap=bootstrap, data_dir=tmp_path, clickhouse=ch_dsn, app_id=f"tally-{prefix[:-1]}",
                        topics=Topics.with_prefix(prefix))
    outputs = Pipeline(settings).output_topics()
    assert {settings.topics.user_actions, settings.topics.dead_letters, settings.topics.active_users,
            settings.topics.alerts, f"{settings.app_id}-{PARTIALS_TOPIC}"} < set(outputs)
    assert {f"{settings.app_id}-{table}-changelog" for table in ("active_days", "profiles", "metric_totals")} < set(outputs)
    another = f"{prefix}another"
    asyncio.run(create_topics(bootstrap, {**{topic: 2 for topic in outputs}, another: 1}))

    async def send_to_each_then_refresh_for_another() -> list:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=300)
        await producer.start()
        try:
            await producer.client.force_metadata_update()  # tracking nothing yet: every topic's metadata
            await track_topics(producer.client, outputs)
            sent = [await producer.send(topic, b"x") for topic in outputs]
            await producer.client.add_topic(another)  # another topic's first send refreshes metadata
            return await asyncio.wait_for(asyncio.gather(*sent), timeout=60)
        finally:
            await producer.stop()

    delivered = asyncio.run(send_to_each_then_refresh_for_another())
    assert [record.topic for record in delivered] == outputs


def test_bad_good_and_duplicate_messages_all_add_up(pipeline_env):
    good = make_actions(2000, seed=2, start=dt.date(2026, 9, 1), days=10)
    last = good[-1].start_epoch_ms

    def bad(**changes) -> bytes:
        fields = dict(event_id="bad", app="amundsen", user="mallory", command="login", schema_version=1,
                      start_epoch_ms=last, keyword_args_json=json.dumps({"password": SECRET}))
        fields.update(changes)
        return UserAction(**fields).SerializeToString()

    bad_messages = (
        [GARBAGE] * 5
        + [bad(event_id=f"v{i}", schema_version=2) for i in range(4)]
        + [bad(event_id=f"f{i}", start_epoch_ms=4_102_444_800_000) for i in range(3)]        # year 2100
        + [bad(event_id=f"e{i}", end_epoch_ms=last - 10) for i in range(3)]
        + [bad(event_id=f"j{i}", pos_args_json="[1, 2") for i in range(2)]
        + [bad(event_id=f"h{i}", output="x" * 300_000) for i in range(2)]
    )
    historical = bad(event_id="old", user="mallorz", start_epoch_ms=last - 5 * DAY_MS)  # valid however old: kept
    duplicates = good[-150:]
    values = [(a.user.encode(), a.SerializeToString()) for a in good]
    values += [(b"mallory", raw) for raw in bad_messages]
    values += [(b"mallorz", historical)]
    values += [(a.user.encode(), a.SerializeToString()) for a in duplicates]
    asyncio.run(publish(pipeline_env.bootstrap, pipeline_env.topics.user_actions, values))

    worker = pipeline_env.worker().start()
    stats = worker.wait_consumed(len(values))
    assert stats["consumed"] == len(values)
    assert (stats["delivered"], stats["dead_lettered"], stats["duplicates"]) == (2001, len(bad_messages), 150)
    assert stats["dead_letters_by_reason"] == {
        "undecodable": 5, "unsupported_schema_version": 4, "future_timestamp": 3, "end_before_start": 3,
        "invalid_json": 2, "oversized": 2}
    assert stats["historical"] >= 1  # five days behind its partition: kept, not refused

    assert worker.query("SELECT count() FROM user_actions") == [[2001]]
    reasons = dict(worker.query("SELECT reason, count() FROM dead_letters GROUP BY reason"))
    assert reasons == stats["dead_letters_by_reason"]
    stored = worker.query("SELECT * FROM dead_letters")
    assert len(stored) == len(bad_messages)
    assert SECRET not in json.dumps(stored, default=str)

    letters = asyncio.run(read_topic(pipeline_env.bootstrap, pipeline_env.topics.dead_letters))
    assert len(letters) == len(bad_messages)
    decoded = [DeadLetter.FromString(m.value) for m in letters]
    assert all(SECRET.encode() not in m.value for m in letters)
    garbage = [d for d in decoded if d.reason == "undecodable"]
    assert all(d.payload_size == len(GARBAGE) and len(d.payload_sha256) == 64 and not d.scrubbed_payload for d in garbage)
    assert len({(d.source_partition, d.source_offset) for d in decoded}) == len(bad_messages)
    # parsed ones carry their scrubbed payload; unparseable and oversized ones only size and hash
    assert {d.reason for d in decoded if d.scrubbed_payload} == {
        "unsupported_schema_version", "future_timestamp", "end_before_start", "invalid_json"}
    worker.stop()


def restarted_midway(pipeline_env, actions, stop_signal: int = signal.SIGTERM):
    """The first half of `actions` through a worker that is then stopped, the rest sent, and the worker
    started again on the same data directory."""
    half = len(actions) // 2
    topic = pipeline_env.topics.user_actions
    send(pipeline_env.bootstrap, topic, actions[:half])
    first = pipeline_env.worker("w1").start()
    first.wait_consumed(half)
    first.stop(stop_signal)
    send(pipeline_env.bootstrap, topic, actions[half:])
    return pipeline_env.worker("w1").start()


def test_killed_worker_restarts_with_the_same_numbers(pipeline_env):
    actions = make_actions(6000, seed=3, start=dt.date(2026, 8, 3), days=35, users=150)
    # no clean shutdown: state comes back from the changelogs
    second = restarted_midway(pipeline_env, actions, signal.SIGKILL)
    wait_for_metrics([second], expected_metrics(actions), actions=actions)
    assert second.query("SELECT count(DISTINCT event_id), count() FROM user_actions FINAL") == [[6000, 6000]]
    second.stop()


LOSSY_WORKER = str(Path(__file__).with_name("lossy_worker.py"))


def _lossy_worker(pipeline_env, name: str, partition: int, offset: int, topic: str | None = None):
    """A worker whose consumer loses message `offset` of `partition` of `topic` (default: the input)
    once, as Faust can around a rebalance."""
    where = f"{topic or pipeline_env.topics.user_actions}:{partition}:{offset}"
    return pipeline_env.worker(name, launcher=[sys.executable, LOSSY_WORKER, where]).start()


def _stores_everything_once(worker, pipeline_env, actions) -> None:
    topic = pipeline_env.topics.user_actions
    wait_for_metrics([worker], expected_metrics(actions), actions=actions)
    stored = "SELECT count(DISTINCT event_id), count() FROM user_actions FINAL"
    try:
        wait_for(lambda: worker.query(stored) == [[len(actions)] * 2], timeout=60, what="every event stored once")
    except TimeoutError:
        raise AssertionError(f"stored {worker.query(stored)} of {len(actions)}, log {worker.problems(50)}")
    try:
        wait_for(lambda: committed(pipeline_env.bootstrap, pipeline_env.app_id, topic) >= len(actions), timeout=60,
                 what="offsets committed to the end")
    except TimeoutError:
        raise AssertionError(f"committed {committed_offsets(pipeline_env.bootstrap, pipeline_env.app_id, topic)}, "
                             f"stats {worker.stats()}, log {worker.problems(50)}")
    log = worker.log_tail(100_000)
    assert "were not delivered to the agent; reading again from" in log, log  # the loss was seen and undone
    reread = worker.stats()["offset_holes"]["reread"]
    assert reread >= 1
    with urllib.request.urlopen(worker.web + "/metrics/") as response:  # what a Prometheus scrape sees
        assert f'tally_offset_holes_total{{outcome="reread"}} {reread}' in response.read().decode().splitlines()


def test_a_message_the_consumer_loses_mid_stream_is_read_again(pipeline_env):
    """A read that skips a message (Faust's fetch loop did, around rebalances, then committed past
    it): the agent takes each partition in order, so it seeks back to the lost message; every
    event stored and counted once."""
    actions = make_actions(2000, seed=13, start=dt.date(2026, 7, 6), days=10, users=80)
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, actions)
    worker = _lossy_worker(pipeline_env, "w1", partition=0, offset=100)
    _stores_everything_once(worker, pipeline_env, actions)
    assert "lossy_worker: lost" in worker.log_tail(10_000)
    worker.stop()


def test_a_partitions_lost_last_message_is_read_again(pipeline_env):
    """A hole with nothing after it (here the partition's last message; at a restart Faust has dropped
    a partition's whole backlog) shows once the worker is idle while the broker has more."""
    actions = make_actions(1000, seed=19, start=dt.date(2026, 7, 6), days=5, users=60)
    topic = pipeline_env.topics.user_actions
    send(pipeline_env.bootstrap, topic, actions)
    last = max(m.offset for m in asyncio.run(read_topic(pipeline_env.bootstrap, topic)) if m.partition == 0)
    worker = _lossy_worker(pipeline_env, "w1", partition=0, offset=last)
    _stores_everything_once(worker, pipeline_env, actions)
    worker.stop()


def test_a_message_lost_at_the_committed_offset_after_a_restart_is_read_again(pipeline_env):
    """The first message after a restart must be the committed one (Faust's commit check let one
    missing offset at the committed head through): a lost one there is read again."""
    actions = make_actions(2000, seed=14, start=dt.date(2026, 7, 6), days=10, users=80)
    topic = pipeline_env.topics.user_actions
    send(pipeline_env.bootstrap, topic, actions[:1000])
    first = pipeline_env.worker("w1").start()
    first.wait_consumed(1000)
    wait_for(lambda: committed(pipeline_env.bootstrap, pipeline_env.app_id, topic) >= 1000, timeout=60,
             what="the first half committed")
    first.stop()
    head = committed_offsets(pipeline_env.bootstrap, pipeline_env.app_id, topic)
    partition = max(head, key=head.get)
    send(pipeline_env.bootstrap, topic, actions[1000:])
    second = _lossy_worker(pipeline_env, "w1", partition=partition, offset=head[partition])
    _stores_everything_once(second, pipeline_env, actions)
    assert f"lossy_worker: lost {topic}:{partition}:{head[partition]}" in second.log_tail(10_000)
    second.stop()


def test_a_lost_count_message_is_read_again(pipeline_env):
    """The partitions' counts reach the totals agent over an internal topic, read in offset order
    too: the first day's counts, lost once by the consumer, still make the published totals."""
    first_day = make_actions(300, seed=17, start=dt.date(2026, 6, 1), days=1, users=40)
    later = make_actions(900, seed=18, start=dt.date(2026, 6, 3), days=3, users=40)
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, first_day)
    worker = _lossy_worker(pipeline_env, "w1", partition=0, offset=0,
                           topic=f"{pipeline_env.app_id}-{PARTIALS_TOPIC}")
    worker.wait_consumed(len(first_day))
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, later)
    wait_for_metrics([worker], expected_metrics(first_day + later), actions=first_day + later)
    log = worker.log_tail(100_000)
    assert "lossy_worker: lost" in log and "were not delivered to the agent; reading again from 0" in log
    worker.stop()


def test_a_lost_profile_is_read_again(pipeline_env):
    """Profiles are read in offset order too: one lost once by the consumer is still stored."""
    from streams.contract import UserProfile
    profiles = [UserProfile(user=f"user-{i}", title=f"title-{i}", updated_epoch_ms=1) for i in range(40)]
    asyncio.run(publish(pipeline_env.bootstrap, pipeline_env.topics.user_profiles,
                        [(p.user.encode(), p.SerializeToString()) for p in profiles]))
    worker = _lossy_worker(pipeline_env, "w1", partition=0, offset=0, topic=pipeline_env.topics.user_profiles)
    wait_for(lambda: worker.query("SELECT count() FROM user_profiles FINAL") == [[40]], what="every profile stored")
    assert worker.stats()["offset_holes"]["reread"] >= 1  # more if Faust's own race struck too
    worker.stop()


async def publish_in_transactions(bootstrap: str, topic: str, actions, per_transaction: int) -> None:
    """As a transactional producer does (Kafka Streams or Flink with exactly-once, any client with a
    transactional id): each transaction leaves a commit marker at an offset of every partition it
    wrote, an offset no message fills."""
    import uuid

    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}",
                                enable_idempotence=True)
    await producer.start()
    try:
        for first in range(0, len(actions), per_transaction):
            async with producer.transaction():
                for action in actions[first:first + per_transaction]:
                    await producer.send(topic, action.SerializeToString(), key=action.user.encode())
    finally:
        await producer.stop()


def test_input_from_a_transactional_producer_is_taken_whole(pipeline_env):
    """The commit markers' offsets are holes that no re-read fills: the worker confirms each with the
    broker and goes on; every event is stored once and the offsets are committed to the end."""
    actions = make_actions(1200, seed=16, start=dt.date(2026, 7, 20), days=5, users=60)
    topic = pipeline_env.topics.user_actions
    asyncio.run(publish_in_transactions(pipeline_env.bootstrap, topic, actions, per_transaction=100))
    worker = pipeline_env.worker("w1").start()
    wait_for_metrics([worker], expected_metrics(actions), actions=actions)
    assert worker.query("SELECT count(DISTINCT event_id), count() FROM user_actions FINAL") == [[1200, 1200]]
    after_last_message = {}  # a partition's last marker follows its last message: no commit passes it
    markers_between_messages = 0
    for message in asyncio.run(read_topic(pipeline_env.bootstrap, topic)):
        markers_between_messages += message.offset > after_last_message.get(message.partition, 0)
        after_last_message[message.partition] = message.offset + 1
    wait_for(lambda: committed_offsets(pipeline_env.bootstrap, pipeline_env.app_id, topic) == after_last_message,
             timeout=60, what="offsets committed past every marker between messages")
    assert markers_between_messages > 0
    assert worker.stats()["offset_holes"]["passed"] == markers_between_messages
    worker.stop()


def sessions_in_order(actions) -> set[frozenset]:
    """The sessions a user's in-order events make: a new one after 30 minutes without an event."""
    from streams.stages.enrich import SESSION_GAP_MS
    last_seen, sessions, current = {}, [], {}
    for action in actions:
        if action.user not in last_seen or action.start_epoch_ms - last_seen[action.user] > SESSION_GAP_MS:
            current[action.user] = set()
            sessions.append(current[action.user])
        current[action.user].add(action.event_id)
        last_seen[action.user] = action.start_epoch_ms
    return {frozenset(session) for session in sessions}


def test_a_restart_continues_the_sessions_it_left_open(pipeline_env):
    """Sessions open when a worker stops go on after its restart: the same sessions as one run."""
    actions = make_actions(2000, seed=15, start=dt.date(2026, 7, 13), days=1, users=80)
    second = restarted_midway(pipeline_env, actions)
    wait_for(lambda: second.query("SELECT uniqExact(event_id) FROM user_actions") == [[2000]], timeout=120,
             what="every event stored")
    stored = second.query("SELECT groupArray(event_id) FROM user_actions FINAL GROUP BY session_id")
    expected = sessions_in_order(actions)
    across = [s for s in expected if s & {a.event_id for a in actions[:1000]} and s & {a.event_id for a in actions[1000:]}]
    assert across  # the data has sessions that span the restart
    assert {frozenset(ids) for (ids,) in stored} == expected
    second.stop()


def metrics_scrape(worker) -> dict[str, float]:
    """The worker's /metrics/ as a Prometheus scrape sees it: metric name -> value, summed over labels."""
    values: dict[str, float] = {}
    with urllib.request.urlopen(worker.web + "/metrics/") as response:
        for line in response.read().decode().splitlines():
            if line.startswith("# TYPE "):
                values.setdefault(line.split()[2], 0.0)
            elif line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                name = name.split("{")[0]
                values[name] = values.get(name, 0.0) + float(value)
    return values


def alert_rule_metrics() -> set[str]:
    """The worker metrics that deploy/prometheus/alerts.yml's rules use."""
    rules = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy/prometheus/alerts.yml").read_text())
    expressions = " ".join(rule["expr"] for group in rules["groups"] for rule in group["rules"])
    return set(re.findall(r"\btally_\w+", expressions))


def test_clickhouse_refusing_inserts_mid_run_stops_consuming_and_loses_nothing(pipeline_env):
    """ClickHouse goes away under a running worker (its table is taken away, then given back): the
    worker retries with backoff, acknowledges nothing it has not stored, and catches up after."""
    import time
    actions = make_actions(5000, seed=6, start=dt.date(2026, 9, 7), days=14, users=120)
    topic = pipeline_env.topics.user_actions
    worker = pipeline_env.worker("w1", "--admin-sql").start()  # the operator's DDL goes through it
    send(pipeline_env.bootstrap, topic, actions[:2000])
    worker.wait_consumed(2000)
    worker.query("RENAME TABLE user_actions TO user_actions_offline", admin=True)
    send(pipeline_env.bootstrap, topic, actions[2000:])
    wait_for(lambda: any("failed (attempt 3)" in line for line in worker.problems(200)), timeout=60,
             what="the worker retrying the insert")
    stats = worker.stats()
    assert stats["consumed"] == stats["delivered"] == 2000  # nothing counted that is not stored
    assert committed(pipeline_env.bootstrap, pipeline_env.app_id, topic) <= 2000  # nor acknowledged to Kafka
    # what the deploy's alert rules watch shows it: failed inserts, and no insert taken meanwhile
    scrape = metrics_scrape(worker)
    assert scrape["tally_sink_failed_inserts_total"] >= 3 and scrape["tally_sink_inserts_total"] == stats["sink"]["inserts"]
    assert alert_rule_metrics() <= set(scrape), "an alert rule watches a metric the worker does not export"
    # two more attempts later, still holding: backpressure, not skipping
    wait_for(lambda: any("failed (attempt 5)" in line for line in worker.problems(400)), timeout=120,
             what="two more insert attempts")
    assert worker.stats()["consumed"] == 2000

    worker.query("RENAME TABLE user_actions_offline TO user_actions", admin=True)
    stats = worker.wait_consumed(5000)
    assert (stats["delivered"], stats["dead_lettered"]) == (5000, 0)
    assert worker.query("SELECT count(), uniqExact(event_id) FROM user_actions FINAL") == [[5000, 5000]]
    wait_for(lambda: committed(pipeline_env.bootstrap, pipeline_env.app_id, topic) == 5000, timeout=60,
             what="offsets committed after the catch-up")
    wait_for_metrics([worker], expected_metrics(actions))
    worker.stop()


def test_rows_clickhouse_refuses_become_dead_letters_and_a_replay_stores_them(pipeline_env):
    """An operator adds a constraint that some valid events break: the worker neither stops nor
    skips: the rest is stored, the refused rows are dead letters with ClickHouse's reason, the
    offsets move on. With the constraint gone, `tally dlq replay` stores them, once."""
    actions = make_actions(1500, seed=8, start=dt.date(2026, 9, 14), days=2)
    refused = list(range(100, 1500, 150))
    for index in refused:
        actions[index].command = "poison.refused"
    topic = pipeline_env.topics.user_actions
    worker = pipeline_env.worker("w1", "--admin-sql").start()  # the operator's DDL goes through it
    worker.query("ALTER TABLE user_actions ADD CONSTRAINT no_poison CHECK command != 'poison.refused'", admin=True)
    send(pipeline_env.bootstrap, topic, actions)
    stats = worker.wait_consumed(len(actions))
    assert (stats["delivered"], stats["dead_lettered"]) == (1490, 10)
    assert stats["dead_letters_by_reason"] == {"refused_by_store": 10}
    assert worker.query("SELECT count(), countIf(command = 'poison.refused') FROM user_actions") == [[1490, 0]]
    letters = worker.query("SELECT event_id, detail FROM dead_letters WHERE reason = 'refused_by_store'")
    assert sorted(event_id for event_id, _ in letters) == sorted(actions[index].event_id for index in refused)
    assert all("VIOLATED_CONSTRAINT" in detail and "no_poison" in detail for _, detail in letters)
    wait_for(lambda: committed(pipeline_env.bootstrap, pipeline_env.app_id, topic) == len(actions), timeout=60,
             what="offsets committed past the refused rows")
    wait_for_metrics([worker], expected_metrics(actions))  # the events were valid: the users were active

    worker.query("ALTER TABLE user_actions DROP CONSTRAINT no_poison", admin=True)
    replay = subprocess.run([sys.executable, "-m", "streams.cli", "dlq", "replay", "--reason", "refused_by_store",
                             "--bootstrap", pipeline_env.bootstrap, "--topic-prefix", pipeline_env.prefix],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert replay.returncode == 0 and "replayed 10 dead letters" in replay.stdout, replay.stdout + replay.stderr
    stats = worker.wait_consumed(len(actions) + 10)
    assert (stats["delivered"], stats["duplicates"], stats["dead_lettered"]) == (1500, 0, 10)
    assert worker.query("SELECT count(), uniqExact(event_id), countIf(command = 'poison.refused') "
                        "FROM user_actions FINAL") == [[1500, 1500, 10]]
    wait_for_metrics([worker], expected_metrics(actions))
    worker.stop()


def test_an_idle_partition_does_not_hold_back_the_alerts_clock(pipeline_env):
    """One partition's users stop after the first day while the others go on: once that partition is
    caught up and quiet, the alerts' clock follows the partitions that still have data."""
    from streams.contract import partition_for_user
    actions = make_actions(800, seed=9, start=dt.date(2026, 10, 5), days=6, users=40)
    quiet = partition_for_user(actions[0].user, 4)
    first_day_end = actions[0].start_epoch_ms - actions[0].start_epoch_ms % DAY_MS + DAY_MS
    kept = [a for a in actions if partition_for_user(a.user, 4) != quiet or a.start_epoch_ms < first_day_end]
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, kept)
    worker = pipeline_env.worker("w1", "--idle-seconds", "2").start()
    worker.wait_consumed(len(kept))
    newest = max(a.start_epoch_ms for a in kept)
    assert max(a.start_epoch_ms for a in kept if partition_for_user(a.user, 4) == quiet) < first_day_end < newest
    wait_for(lambda: worker.stats()["alerts_firing"]["watermark_epoch_ms"] == newest, timeout=60,
             what="the alerts' clock passing the quiet partition")
    worker.stop()


def test_replayed_slice_and_two_workers_count_each_user_once(pipeline_env):
    actions = make_actions(5000, seed=4, start=dt.date(2026, 7, 6), days=28, users=200)
    topic = pipeline_env.topics.user_actions
    one = pipeline_env.worker("w1").start()
    # the second worker shares the consumer group: it takes half the partitions. chDB is per
    # process, so it writes to its own data dir; the live tables are the cluster-wide answer.
    two = pipeline_env.worker("w2").start()
    wait_for(lambda: len(one.stats()["consumer_lag"]) == len(two.stats()["consumer_lag"]) == 2,
             what="the two workers split the four partitions")
    send(pipeline_env.bootstrap, topic, actions)
    send(pipeline_env.bootstrap, topic, actions[1000:2500])  # a replayed slice: the same events again
    wait_for_metrics([one, two], expected_metrics(actions))
    rows = sum(w.query("SELECT count(DISTINCT event_id) FROM user_actions FINAL")[0][0] for w in (one, two))
    assert rows == 5000
    one.stop()
    two.stop()


def test_late_and_historical_events_are_kept_counted_and_publish_corrections(pipeline_env):
    actions = make_actions(1500, seed=5, start=dt.date(2026, 6, 1), days=10, users=60)
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, actions)
    worker = pipeline_env.worker().start()
    worker.wait_consumed(1500)
    last = max(a.start_epoch_ms for a in actions)
    newcomer_late = UserAction(event_id="late-ok", app="bi", user="latecomer", command="dashboard.viewed",
                               schema_version=1, start_epoch_ms=last - 2 * DAY_MS)
    historical = UserAction(event_id="late-old", app="bi", user="latecomer2", command="dashboard.viewed",
                            schema_version=1, start_epoch_ms=last - 4 * DAY_MS)
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, [newcomer_late, historical])
    stats = worker.wait_consumed(1502)
    assert stats["dead_letters_by_reason"] == {}

    expected = expected_metrics(actions + [newcomer_late, historical])
    wait_for_metrics([worker], expected)

    late_day = dt.datetime.fromtimestamp(newcomer_late.start_epoch_ms / 1000, dt.timezone.utc).date().isoformat()

    def published_updates():
        return [MetricUpdate.FromString(m.value) for m in
                asyncio.run(read_topic(pipeline_env.bootstrap, pipeline_env.topics.active_users))]

    def correction_published():
        updates = published_updates()
        return updates if any(u.correction and (u.metric, u.app, u.day) == ("dau", "bi", late_day)
                              and u.value == expected[("dau", "bi", late_day)] for u in updates) else None

    # the late event's day is re-published, flagged as a correction, with the new value
    updates = wait_for(correction_published, what="a correction on the metric topic")

    # a consumer that starts later rebuilds the current state from the compacted topic
    latest = {}
    for update in updates:
        key = (update.metric, update.app, update.day)
        if key not in latest or update.version > latest[key].version:
            latest[key] = update
    assert {k: u.value for k, u in latest.items()} == expected
    worker.stop()


def test_alert_rules_fire_and_resolve_once_each(pipeline_env, tmp_path):
    rules = tmp_path / "alerts.yaml"
    rules.write_text("rules:\n  - {name: bi_dau_low, kind: threshold, metric: dau, app: bi, below: 10}\n")
    day0 = int(dt.datetime(2026, 5, 4, tzinfo=dt.timezone.utc).timestamp() * 1000)
    actions = []
    for day, users in enumerate([20, 3, 20, 20]):  # healthy, a bad day, healthy again, healthy
        for u in range(users):
            ts = day0 + day * DAY_MS + 9 * 3_600_000 + u * 60_000
            actions.append(UserAction(event_id=f"a{day}-{u}", app="bi", user=f"user-{u}", command="dashboard.viewed",
                                      schema_version=1, start_epoch_ms=ts, end_epoch_ms=ts + 100))
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, actions)
    worker = pipeline_env.worker("w1", "--alert-rules", str(rules)).start()
    worker.wait_consumed(len(actions))

    def alerts():
        return [Alert.FromString(m.value) for m in
                asyncio.run(read_topic(pipeline_env.bootstrap, pipeline_env.topics.alerts))]

    seen = wait_for(lambda: (found := alerts()) and len(found) >= 2 and found, what="alerts published")
    assert [(a.rule, a.state, a.app, a.value) for a in seen] == [
        ("bi_dau_low", "firing", "bi", 3.0), ("bi_dau_low", "resolved", "bi", 20.0)]
    assert worker.stats()["alerts_firing"]["firing"] == []
    worker.stop()
