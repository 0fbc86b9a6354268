"""Faults on purpose, against a broker of this test's own (the session's stays untouched): the Kafka
broker killed with SIGKILL and restarted on the same data dir, twice, then paused with SIGSTOP for
60 s and resumed, while a worker consumes and the SDK's tracker produces at a steady rate.

Afterwards every event the tracker acknowledged is stored exactly once (the tracker drops and
fails nothing: it buffers through the outages); the live DAU equals uniqExact in ClickHouse; the
worker recovered without a restart; and while the broker hung, /readyz/ said not ready and
/stats/ showed why."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import WorkerProcess, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

RATE = 100        # events/s the tracker sends
USERS = 80
HANG_SECONDS = 60


def ready(worker) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(worker.web + "/readyz/", timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_broker_killed_twice_and_hung_loses_nothing(tmp_path):
    from streams.ops.broker import Broker
    from streams.producer.tracker import Tracker

    broker = Broker(home=tmp_path / "kafka", port=free_port(), controller_port=free_port()).start()
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    worker = WorkerProcess(tmp_path / "worker", broker.bootstrap, prefix, f"tally-{prefix[:-1]}", [])
    tracker = None
    try:
        worker.start().wait_assigned()
        assert ready(worker)[0] == 200
        tracker = Tracker(broker.bootstrap, "bi", f"{prefix}user-actions", request_timeout_ms=5_000)
        stop = threading.Event()

        def produce() -> None:
            n = 0
            while not stop.is_set():
                tracker.track("dashboard.viewed", f"user-{n % USERS}", n=n)
                n += 1
                time.sleep(1 / RATE)
        producing = threading.Thread(target=produce, daemon=True)
        producing.start()
        time.sleep(8)

        for down in (12, 20):  # SIGKILL, then the same data dir again
            os.killpg(broker.pid(), signal.SIGKILL)
            time.sleep(down)
            broker.start()
            time.sleep(10)

        os.killpg(broker.pid(), signal.SIGSTOP)
        try:
            deadline = time.monotonic() + HANG_SECONDS
            seen_not_ready = None
            while time.monotonic() < deadline:
                status, answer = ready(worker)
                if status == 503 and not answer["kafka_reachable"]:
                    seen_not_ready = answer
                time.sleep(2)
            assert seen_not_ready is not None, "the worker said ready through a hung broker"
            assert worker.stats()["health"]["kafka_reachable"] is False
        finally:
            os.killpg(broker.pid(), signal.SIGCONT)

        time.sleep(10)
        stop.set()
        producing.join()
        assert tracker.flush(timeout=180), tracker.stats()
        stats = tracker.stats()
        assert (stats.dropped, stats.failed, stats.internal_errors) == (0, 0, 0)
        accepted = stats.delivered

        deadline = time.monotonic() + 180
        while worker.query("SELECT count() FROM user_actions FINAL") != [[accepted]]:
            assert worker.process.poll() is None, worker.log_tail()
            assert time.monotonic() < deadline, (accepted, worker.query("SELECT count() FROM user_actions FINAL"),
                                                 worker.problems())
            time.sleep(1)
        assert worker.query("SELECT count(), uniqExact(event_id) FROM user_actions FINAL") == [[accepted, accepted]]
        assert worker.process.poll() is None  # it recovered without a restart

        expected = dict(worker.query("SELECT toString(ds), uniqExact(user) FROM user_actions WHERE app = 'bi' "
                                     "GROUP BY ds"))
        deadline = time.monotonic() + 120
        while True:
            live = {t["day"]: t["value"] for t in worker.active_users() if t["metric"] == "dau" and t["app"] == "bi"}
            if all(live.get(day) == n for day, n in expected.items()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {day: live.get(day) for day in expected} == expected
        deadline = time.monotonic() + 60
        while ready(worker)[0] != 200:
            assert time.monotonic() < deadline, ready(worker)
            time.sleep(1)
    finally:
        if tracker is not None:
            tracker.close(timeout=0)
        worker.stop()
        broker.stop()
