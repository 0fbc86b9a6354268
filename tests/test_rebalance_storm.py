"""A rebalance storm: three workers in one group while the SDK streams 200k events into six
partitions; every 15-20 s one worker is killed (SIGKILL and SIGTERM in turn) and started again on
its data dir. Each worker has its own embedded store, as deployed workers each have a shard.

Afterwards: every event the input topic holds is stored, and a row stored by two workers (the one
that lost the partition before committing, and the one that took it over) is the same row, so a
shared ReplacingMergeTree holds each event once after FINAL; within each store each event is
there once after FINAL; the live DAU/WAU/MAU equal uniqExact over the stores; and every partition
has exactly one owner at the end."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import secrets
import signal
import threading
import time
import uuid

import pytest

from conftest import ROOT, STORED_ROW, read_topic, versions_by_event

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

EVENTS = 200_000
RATE = 3_000          # events/s the tracker sends
PARTITIONS = 6
USERS = 400
SESSION_TIMEOUT = 10  # a killed worker's partitions move after this (the default, 60 s, would stall each kill a minute)


def stream_events(tracker, stop: threading.Event) -> None:
    """EVENTS events at RATE per second in 10 ms ticks; a fifth of the users are known by email."""
    started, sent = time.monotonic(), 0
    while sent < EVENTS and not stop.is_set():
        due = min(EVENTS, int((time.monotonic() - started) * RATE) + 1)
        for n in range(sent, due):
            user = f"ann{n % USERS}@example.com" if n % USERS % 5 == 0 else f"user-{n % USERS}"
            tracker.track("dashboard.viewed", user, dashboard=f"d{n % 7}", n=str(n))
        sent = due
        time.sleep(0.01)


def sent_event_ids(bootstrap: str, topic: str) -> list[str]:
    from streams.contract import UserAction, UserActionBatch, is_envelope
    ids = []
    for record in asyncio.run(read_topic(bootstrap, topic)):
        actions = (UserActionBatch.FromString(record.value).actions if is_envelope(record.headers)
                   else [UserAction.FromString(record.value)])
        ids.extend(action.event_id for action in actions)
    return ids


def test_workers_killed_and_restarted_every_few_seconds_lose_and_double_nothing(pipeline_env, monkeypatch):
    from streams.ops.broker import create_topics, pipeline_topics
    from streams.producer.tracker import Tracker

    key = secrets.token_hex(32)  # workers sharing partitions share the pseudonym key, as deployed
    monkeypatch.setenv("TALLY_HMAC_KEY", key)
    env = {**os.environ, "TALLY_HMAC_KEY": key}

    class Settings:  # what pipeline_topics reads
        partitions = PARTITIONS
        topics = pipeline_env.topics
    counts, compacted = pipeline_topics(Settings)
    asyncio.run(create_topics(pipeline_env.bootstrap, counts, compacted))
    workers = [pipeline_env.worker(f"w{i}", "--partitions", str(PARTITIONS), "--session-timeout",
                                   str(SESSION_TIMEOUT), env=env) for i in range(3)]
    for worker in workers:
        worker.start()
    owners = lambda: [set(map(int, w.stats()["consumer_lag"])) for w in workers]  # noqa: E731
    deadline = time.monotonic() + 120
    while sum(map(len, owners())) < PARTITIONS:
        assert time.monotonic() < deadline, [w.log_tail() for w in workers]
        time.sleep(0.5)

    tracker = Tracker(pipeline_env.bootstrap, "bi", pipeline_env.topics.user_actions, buffer_size=EVENTS)
    stop = threading.Event()
    producing = threading.Thread(target=stream_events, args=(tracker, stop), daemon=True)
    producing.start()
    kills = []
    rng = random.Random(7)
    try:
        # the storm lasts while the stream is produced, and at least four kills
        while producing.is_alive() or len(kills) < 4:
            time.sleep(rng.uniform(15, 20))
            victim = workers[len(kills) % 3]
            how = signal.SIGKILL if len(kills) % 2 == 0 else signal.SIGTERM
            victim.stop(how)
            kills.append({"worker": victim.data_dir.name, "signal": how.name, "at_events": tracker.stats().delivered})
            victim.start()
    finally:
        stop.set()
        producing.join()
    assert tracker.flush(timeout=120), tracker.stats()
    stats = tracker.stats()
    tracker.close()
    assert (stats.tracked, stats.delivered, stats.dropped, stats.failed) == (EVENTS, EVENTS, 0, 0)
    sent = sent_event_ids(pipeline_env.bootstrap, pipeline_env.topics.user_actions)
    assert len(sent) == len(set(sent)) == EVENTS

    deadline = time.monotonic() + 240
    while True:
        stored = set()
        for worker in workers:
            stored |= {row[0] for row in worker.query("SELECT DISTINCT event_id FROM user_actions")}
        if len(stored) >= EVENTS or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert stored == set(sent)  # every event stored, nothing that was not sent

    stores = [worker.query(f"SELECT {STORED_ROW} FROM user_actions FINAL") for worker in workers]
    in_store = [len(rows) for rows in stores]
    for rows in stores:
        assert len(rows) == len({row[0] for row in rows})  # each event once in a store after FINAL
    assert all(len(versions) == 1 for versions in versions_by_event(stores).values())  # a copy is the same row

    # every partition has one owner, and the live totals (from the owner of the totals) equal uniqExact
    deadline = time.monotonic() + 120
    while True:
        owned = owners()
        if sorted(p for partitions in owned for p in partitions) == list(range(PARTITIONS)):
            break
        assert time.monotonic() < deadline, owned
        time.sleep(1)
    day_users: dict[str, set] = {}
    for worker in workers:
        for day, user in worker.query("SELECT DISTINCT toString(ds), user FROM user_actions"):
            day_users.setdefault(day, set()).add(user)
    expected = {}
    for day in day_users:  # one day, or two if the run crossed midnight (UTC)
        date = dt.date.fromisoformat(day)
        for metric, days in (("dau", 1), ("wau", 7), ("mau", 30)):
            window = set().union(*(users for other, users in day_users.items()
                                   if 0 <= (date - dt.date.fromisoformat(other)).days < days))
            expected[(metric, day)] = len(window)
    deadline = time.monotonic() + 120
    while True:
        live = {(t["metric"], t["day"]): t["value"] for w in workers for t in w.active_users()
                if t["app"] == "bi" and (t["metric"], t["day"]) in expected}
        if live == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert live == expected
    report = {"kills": kills, "rows_per_store": in_store, "events": EVENTS,
              "stored_twice": sum(in_store) - EVENTS}
    artifacts = ROOT / ".tally" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "rebalance-storm.json").write_text(json.dumps(report, indent=2))
    print("rebalance storm:", json.dumps(report))
