"""Scale-out on one machine: a three-node Kafka cluster (`tally broker start --nodes 3`'s own code),
three workers in one group, the SDK producing at a steady rate; the broker leading most input
partitions is killed with SIGKILL and brought back, then the group coordinator's broker too.
Nothing the tracker had acknowledged is lost, nothing is stored twice, the live totals stay exact,
and no worker needed a restart. The time from each kill to the first event stored after it is
reported (printed and kept in .tally/test-artifacts/cluster.json), never asserted."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import threading
import time
import uuid

import pytest

from conftest import ROOT, STORED_ROW, WorkerProcess, versions_by_event
from streams.ops.broker import free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

RATE = 150            # events/s the tool's tracker sends
DOWN_SECONDS = 20     # how long a killed node stays down
USERS = 120


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from streams.ops.broker import Cluster
    kafka = Cluster(home=tmp_path_factory.mktemp("kafka-cluster"), nodes=3, port=free_ports(6))
    kafka.start()
    yield kafka
    kafka.stop()


async def _leaders(bootstrap: str, topic: str, group: str) -> tuple[dict[int, int], int]:
    from aiokafka.admin import AIOKafkaAdminClient
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        leaders = {p["partition"]: p["leader"] for p in described["partitions"]}
        return leaders, await admin.find_coordinator(group)
    finally:
        await admin.close()


def kill_node(cluster, node_id: int) -> None:
    os.killpg(cluster.node(node_id).pid(), signal.SIGKILL)


def restart_node(cluster, node_id: int) -> None:
    member = cluster.node(node_id)
    process = member.launch()
    member._wait_ready(process, 120)


def newest_stored(workers) -> float:
    """The newest `ingested_at` in any worker's store, as epoch seconds (0 when nothing yet)."""
    newest = 0.0
    for worker in workers:
        (value,), = worker.query("SELECT toUnixTimestamp64Milli(max(ingested_at)) FROM user_actions")
        newest = max(newest, (value or 0) / 1000)
    return newest


def test_leader_and_coordinator_lost_under_load(cluster, tmp_path):
    from streams.config import Topics
    from streams.ops.broker import create_topics, pipeline_topics
    from streams.producer.tracker import Tracker

    prefix = f"k{uuid.uuid4().hex[:8]}-"
    app_id = f"tally-{prefix[:-1]}"
    topics = Topics.with_prefix(prefix)

    class Settings:  # what pipeline_topics reads
        partitions = 6
    Settings.topics = topics
    counts, compacted = pipeline_topics(Settings)
    asyncio.run(create_topics(cluster.bootstrap, counts, compacted, replication=3))
    workers = [WorkerProcess(tmp_path / f"w{i}", cluster.bootstrap, prefix, app_id,
                             ["--replication", "3", "--partitions", "6"]) for i in range(3)]
    report = {}
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 120
        while sum(len(w.stats()["consumer_lag"]) for w in workers) < 6:
            assert time.monotonic() < deadline, [w.log_tail() for w in workers]
            time.sleep(0.5)

        tracker = Tracker(cluster.bootstrap, "bi", topics.user_actions, request_timeout_ms=5_000)
        stop = threading.Event()

        def produce() -> None:
            n = 0
            while not stop.is_set():
                tracker.track("dashboard.viewed", f"user-{n % USERS}", dashboard=f"d{n % 7}")
                n += 1
                time.sleep(1 / RATE)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(10)

        for what in ("partition leader", "group coordinator"):
            leaders, coordinator = asyncio.run(_leaders(cluster.bootstrap, topics.user_actions, app_id))
            victim = (max(set(leaders.values()), key=list(leaders.values()).count) if what == "partition leader"
                      else coordinator)
            killed_at = time.time()
            kill_node(cluster, victim)
            while newest_stored(workers) <= killed_at:  # the first event stored after the kill
                assert all(w.process.poll() is None for w in workers), "a worker died"
                time.sleep(0.2)
            report[what] = {"node": victim, "seconds_to_first_event_stored_after_the_kill":
                            round(newest_stored(workers) - killed_at, 2)}
            time.sleep(max(0.0, DOWN_SECONDS - (time.time() - killed_at)))
            restart_node(cluster, victim)
            time.sleep(10)

        stop.set()
        producer.join()
        assert tracker.flush(timeout=120), tracker.stats()
        stats = tracker.stats()
        tracker.close()
        assert (stats.dropped, stats.failed, stats.internal_errors) == (0, 0, 0)
        accepted = stats.delivered

        deadline = time.monotonic() + 180
        while True:
            ids = [set(row[0] for row in w.query("SELECT event_id FROM user_actions FINAL")) for w in workers]
            if len(set().union(*ids)) >= accepted or time.monotonic() > deadline:
                break
            time.sleep(1)
        everything = set().union(*ids)
        assert len(everything) == accepted          # every acknowledged event is stored ...
        # ... and where partitions moved (the coordinator's loss can rebalance the group) before a
        # commit, the new owner stored the same row again: a shared store holds it once after FINAL
        stores = [worker.query(f"SELECT {STORED_ROW} FROM user_actions FINAL") for worker in workers]
        assert all(len(rows) == 1 for rows in versions_by_event(stores).values())
        report["stored_twice"] = sum(map(len, ids)) - accepted
        assert all(w.process.poll() is None for w in workers)  # none needed a restart

        # the live totals equal uniqExact over what the stores hold, on every day of the run
        users = {}
        for worker in workers:
            for day, user in worker.query("SELECT toString(ds), user FROM user_actions FINAL"):
                users.setdefault(day, set()).add(user)
        deadline = time.monotonic() + 120
        while True:
            live = {}
            for worker in workers:
                live.update({(t["metric"], t["day"]): t["value"] for t in worker.active_users()
                             if t["app"] == "bi" and t["metric"] == "dau"})
            if all(live.get(("dau", day)) == len(u) for day, u in users.items()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {day: live.get(("dau", day)) for day in users} == {day: len(u) for day, u in users.items()}
    finally:
        for worker in workers:
            worker.stop()
        report["accepted_events"] = locals().get("accepted")
        artifacts = ROOT / ".tally" / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "cluster.json").write_text(json.dumps({"at": dt.datetime.now(dt.timezone.utc).isoformat(),
                                                            **report}, indent=2))
        print("leader loss:", json.dumps(report))
