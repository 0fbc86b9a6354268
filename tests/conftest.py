"""Shared fixtures: one real Kafka broker and one embedded ClickHouse path per test session."""
from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from streams.store import clickhouse
from streams.ops.broker import Broker, create_topics, free_port  # noqa: F401 (tests import free_port from here)

TEST_BROKER_PORT = int(os.environ.get("TALLY_TEST_BROKER_PORT", "29092"))
# One pseudonym key for the session's workers, SDK trackers and expected values, as a deployment
# sets TALLY_HMAC_KEY; tests of a data directory's own key start their processes without it.
os.environ.setdefault("TALLY_HMAC_KEY", "tally-test-suite-key")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Broker:
    """The session's Kafka broker (KRaft, single node, real jars), stopped at the end."""
    broker = Broker(home=tmp_path_factory.mktemp("kafka"), port=TEST_BROKER_PORT,
                    controller_port=TEST_BROKER_PORT + 1)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka) -> str:
    return kafka.bootstrap


@pytest.fixture
def new_topic(bootstrap):
    """Create a fresh topic with a unique name: new_topic("user-actions", partitions=4)."""
    def make(prefix: str = "t", partitions: int = 4, compacted: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topics(bootstrap, {name: partitions}, {name} if compacted else set()))
        return name
    return make


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def ch_dsn(chdb_path) -> str:
    """A DSN for a fresh, migrated database in the session's embedded ClickHouse."""
    dsn = f"chdb://{chdb_path}?database=test_{uuid.uuid4().hex[:10]}"
    clickhouse.migrate(clickhouse.connect(dsn))
    return dsn


@pytest.fixture
def ch(ch_dsn):
    """A client on a fresh, migrated database."""
    return clickhouse.connect(ch_dsn)


# ---- a real worker process, as a user runs it -------------------------------------------------

import json as _json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`tally worker` in a subprocess, with its own data dir, consumer group and topic prefix."""

    def __init__(self, data_dir: Path, bootstrap: str, prefix: str, app_id: str, extra: list[str],
                 launcher: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.bootstrap, self.prefix, self.app_id, self.extra = data_dir, bootstrap, prefix, app_id, extra
        self.env = env  # the process's whole environment; None = this one's
        self.launcher = launcher or [sys.executable, "-m", "streams.cli"]
        self.web_port = free_port()
        self.process: subprocess.Popen | None = None
        self.headers: dict[str, str] = {}  # sent with every request (a token, when bound beyond 127.0.0.1)

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 90.0) -> "WorkerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "worker.log", "ab")
        self.process = subprocess.Popen(
            [*self.launcher, "worker", "--data-dir", str(self.data_dir),
             "--bootstrap", self.bootstrap, "--topic-prefix", self.prefix, "--app-id", self.app_id,
             "--web-port", str(self.web_port), "--worker-log-level", "INFO", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker exited: {self.log_tail()}"
            try:
                if "consumed" in self.stats():
                    return self
            except (OSError, ValueError):  # not listening yet, or not ready to answer
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker not serving: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        path = self.data_dir / "worker.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def problems(self, limit: int = 30) -> list[str]:
        """The log's warning/error lines about the pipeline itself: what a failed test should show."""
        path = self.data_dir / "worker.log"
        if not path.exists():
            return []
        keep = ("[ERROR]", "[CRITICAL]", "Traceback", "rebalanc", "Revoking", "Setting newly assigned")
        return [line[:300] for line in path.read_text(errors="replace").splitlines() if any(k in line for k in keep)][-limit:]

    def _call(self, path: str, body: dict | None = None):
        data = _json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.web + path, data=data,
                                         headers={"Content-Type": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return _json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return _json.loads(exc.read() or b"{}")

    def stats(self) -> dict:
        return self._call("/stats/")

    def active_users(self) -> list[dict]:
        return self._call("/active-users/")

    def query(self, sql: str, admin: bool = False) -> list[list]:
        answer = self._call("/query/", {"sql": sql, "admin": admin})
        assert "rows" in answer, answer
        return answer["rows"]

    def wait_assigned(self, partitions: int = 4, timeout: float = 120.0) -> "WorkerProcess":
        """Wait until the worker owns `partitions` input partitions (it has joined its group)."""
        deadline = time.monotonic() + timeout
        while len(self.stats()["consumer_lag"]) < partitions:
            assert self.process.poll() is None and time.monotonic() < deadline, f"not assigned: {self.log_tail()}"
            time.sleep(0.3)
        return self

    def wait_consumed(self, count: int, timeout: float = 180.0) -> dict:
        """Wait until the worker has accounted for `count` input offsets (and inserted them)."""
        deadline = time.monotonic() + timeout
        stats = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker exited: {self.log_tail()}"
            stats = self.stats()
            if stats["consumed"] >= count:
                return stats
            time.sleep(0.5)
        raise TimeoutError(f"consumed {stats.get('consumed')} of {count}: {self.log_tail()}\n"
                           f"stats: {stats}\nwhere the worker's code waits:\n{self.waiting_in()}")

    def waiting_in(self, settle: float = 5.0) -> str:
        """The worker's own frames in every asyncio task, from the task dump its runner (mode) writes
        to the log on SIGUSR1: what a stuck worker waits for."""
        path = self.data_dir / "worker.log"
        start = path.stat().st_size
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(settle)
        lines = path.read_bytes()[start:].decode(errors="replace").splitlines()
        ours = [i for i, line in enumerate(lines) if line.lstrip().startswith("File") and "/streams/" in line
                and "/streams/cli.py" not in line and "/streams/runtime/worker.py" not in line]  # the main thread's start
        return "\n".join(f"{lines[i].strip()}: {lines[i + 1].strip() if i + 1 < len(lines) else ''}" for i in ours)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def pipeline_env(bootstrap, tmp_path):
    """A fresh topic prefix and consumer group, and a factory of worker processes that share them."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    app_id = f"tally-{prefix[:-1]}"
    workers: list[WorkerProcess] = []

    class Env:
        topics = None

        def worker(self, name: str = "w1", *extra: str, launcher: list[str] | None = None,
                   env: dict[str, str] | None = None) -> WorkerProcess:
            process = WorkerProcess(tmp_path / name, bootstrap, prefix, app_id, list(extra), launcher, env)
            workers.append(process)
            return process

    from streams.config import Topics
    env = Env()
    env.prefix, env.app_id, env.bootstrap = prefix, app_id, bootstrap
    env.topics = Topics.with_prefix(prefix)
    yield env
    for process in workers:
        process.stop(signal.SIGKILL)


async def publish(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes | None]]) -> None:
    """Send (key, value) pairs and wait for every ack. Idempotent, as the SDK's producer: a retried
    request neither duplicates nor reorders a partition, which tests that compress weeks of event
    time into seconds would otherwise see as days of lateness."""
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024,
                                enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of `topic`, from its beginning to its end as of now (the tests' one reader)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest")  # subscribed first: the topic's metadata is fetched
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.unsubscribe()
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


STORED_ROW = "event_id, user, command, toString(ds), start_epoch_ms, event_name, properties"


def versions_by_event(rows_per_store: list[list[list]]) -> dict[str, set[str]]:
    """Each event id's distinct stored rows across the workers' stores (`STORED_ROW` columns):
    where a partition moved before a commit, its new owner stored a copy, which must be the same row."""
    versions: dict[str, set[str]] = {}
    for rows in rows_per_store:
        for row in rows:
            versions.setdefault(row[0], set()).add(_json.dumps(row, sort_keys=True))
    return versions
