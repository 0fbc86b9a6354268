"""The four measurements, each against the real broker and embedded ClickHouse.

    ceiling  a bare aiokafka consumer that reads and decodes the pre-loaded messages, nothing else
    naive    bench.naive_peer: one Faust event at a time, one ClickHouse insert per event
    peer     bench.batch_peer: aiokafka getmany + decode + column-oriented inserts of 20k rows, no stages
    tally    the full worker (`tally worker`) as a subprocess, over the same pre-loaded messages
    latency  a fresh worker under a steady offered load: produce time -> row queryable in ClickHouse

Every stage reads the same topic with its own consumer group; the worker stages get their own
data directories. The harness only observes: /stats/ and /query/ over HTTP, CPU and memory in /proc.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from streams.ops.broker import free_port
from streams.config import Settings, Topics
from streams.ops.demo import stop as stop_process  # SIGTERM, then SIGKILL after a timeout

from . import procstat
from .load import Sent, Traffic, preload, send_steady
from .measure import (WARM_UP_FRACTION, Progress, measured_window, memory_profile, percentile, time_split, visible_after,
                      worker_clock)

POLL_SECONDS = 0.2          # how often a throughput run is looked at
VISIBILITY_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class RunPlan:
    """What one `tally bench` run measures and how big."""
    events: int = 500_000           # pre-loaded once; the ceiling and Tally read all of them
    naive_events: int = 20_000      # the naive peer is slow: it reads only the first ones
    latency_rate: float = 5_000.0   # events per second offered during the latency run
    latency_seconds: float = 30.0
    partitions: int = 4
    batch_size: int | None = None   # the worker's --batch-size; None = its default
    envelope: int = 1               # actions per Kafka message (UserActionBatch envelopes when > 1)

    @classmethod
    def quick(cls) -> "RunPlan":
        """Small enough for the test suite; smaller batches so even a short run has several inserts."""
        return cls(events=5_000, naive_events=500, latency_rate=500.0, latency_seconds=5.0, batch_size=1_000)


# ---- input --------------------------------------------------------------------------------------

async def create_pipeline_topics(bootstrap: str, prefix: str, partitions: int) -> Topics:
    from streams.ops.broker import create_topics, pipeline_topics
    settings = Settings(bootstrap=bootstrap, topics=Topics.with_prefix(prefix), partitions=partitions)
    counts, compacted = pipeline_topics(settings)
    await create_topics(bootstrap, counts, compacted)
    return settings.topics


async def load_input(bootstrap: str, prefix: str, traffic: Traffic, partitions: int, envelope: int = 1) -> Topics:
    """Topics for `prefix`, every profile, then every action, all acknowledged before anything is measured."""
    topics = await create_pipeline_topics(bootstrap, prefix, partitions)
    await preload(bootstrap, topics.user_profiles, traffic.profiles, partitions)
    await preload(bootstrap, topics.user_actions, traffic.messages, partitions, envelope)
    return topics


# ---- 1. ceiling -------------------------------------------------------------------------------

def decode_actions(value: bytes, headers) -> list:
    """The UserActions in one Kafka message: itself, or its envelope's."""
    from streams.contract import UserAction, UserActionBatch, is_envelope
    if is_envelope(headers):
        return list(UserActionBatch.FromString(value).actions)
    return [UserAction.FromString(value)]


async def run_ceiling(bootstrap: str, topic: str, events: int, group: str, max_records: int = 1_000) -> dict:
    """A bare aiokafka consumer: fetch, decode each message into UserActions, nothing else."""
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    samples: list[Progress] = []
    decoded = 0
    try:
        while decoded < events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            for records in batches.values():
                for record in records:
                    decoded += len(decode_actions(record.value, record.headers))
            samples.append(Progress(time.monotonic(), decoded, time.process_time(), 0.0))
    finally:
        await consumer.stop()
    window = measured_window(samples, events)
    return {"events": window.events, "seconds": round(window.seconds, 3), "events_per_s": round(window.events_per_s),
            "cpu_seconds_per_million": round(window.cpu_seconds_per_million, 1)}


# ---- 2. naive peer ----------------------------------------------------------------------------

def run_naive(bootstrap: str, topic: str, events: int, work_dir: Path, app_id: str,
              timeout_s: float = 1800, floor: bool = False, module: str = "bench.naive_peer") -> dict:
    """A peer in a subprocess until it has stored `events` events: bench.naive_peer one by one (or,
    as the Faust floor, decoded in take_events batches), or `module="bench.batch_peer"`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    result_file = work_dir / "naive-result.json"
    with open(work_dir / "naive.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--bootstrap", bootstrap, "--topic", topic, "--app-id", app_id,
             "--data-dir", str(work_dir), "--events", str(events), "--result", str(result_file),
             *(["--floor"] if floor else [])],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not result_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"naive peer exited with {process.returncode}; see {work_dir / 'naive.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"naive peer did not read {events} events in {timeout_s:.0f}s")
            time.sleep(POLL_SECONDS)
        time.sleep(0.1)  # the file is written in one call; let it close
        measured = json.loads(result_file.read_text())
        if "error" in measured:
            raise RuntimeError(f"naive peer failed: {measured['error']}; see {work_dir / 'naive.log'}")
    finally:
        stop_process(process)
    rate = measured["events"] / measured["seconds"]
    return {"events": measured["events"], "seconds": round(measured["seconds"], 3), "events_per_s": round(rate),
            "cpu_seconds_per_million": round(measured["cpu_seconds"] / measured["events"] * 1_000_000, 1),
            "inserts": measured.get("inserts", 0 if floor else events)}


# ---- the Tally worker as a user runs it ---------------------------------------------------------

class Worker:
    """`python -m streams.cli worker` with its own data dir, topic prefix and consumer group."""

    def __init__(self, work_dir: Path, bootstrap: str, prefix: str, app_id: str, plan: RunPlan) -> None:
        self.work_dir, self.bootstrap, self.prefix, self.app_id = work_dir, bootstrap, prefix, app_id
        self.web_port = free_port()
        self.extra = ["--partitions", str(plan.partitions)]
        if plan.batch_size:
            self.extra += ["--batch-size", str(plan.batch_size)]
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout_s: float = 120) -> "Worker":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / "worker.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--data-dir", str(self.work_dir),
                 "--bootstrap", self.bootstrap, "--topic-prefix", self.prefix, "--app-id", self.app_id,
                 "--web-port", str(self.web_port), *self.extra],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"worker not serving after {timeout_s:.0f}s; see {self.work_dir / 'worker.log'}")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}; see {self.work_dir / 'worker.log'}")

    def _call(self, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def stats(self) -> dict:
        return self._call("/stats/")

    def query(self, sql: str) -> list[list]:
        try:
            return self._call("/query/", {"sql": sql})["rows"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"query failed: {exc.read().decode(errors='replace')}") from None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=60)


def watch(worker: Worker, events: int, timeout_s: float) -> list[Progress]:
    """Look at the worker every POLL_SECONDS until it has consumed `events` input events and every one it
    delivered is a row in ClickHouse. Progress counts consumed events; the last look counts stored rows."""
    samples: list[Progress] = []
    deadline = time.monotonic() + timeout_s
    while True:
        worker.check_alive()
        stats = worker.stats()
        done = stats["consumed"]
        if done >= events:
            stored = worker.query("SELECT count() FROM user_actions")[0][0]
            done = events if stored >= stats["delivered"] else events - 1
        at_s = time.monotonic()
        usage = procstat.sample(worker.pid)
        samples.append(Progress(at_s, done, usage.cpu_seconds, usage.rss_mb,
                                {**worker_clock(stats), "engine_cpu": usage.engine_cpu_seconds}))
        if done >= events:
            return samples
        if at_s > deadline:
            raise TimeoutError(f"{stats['consumed']} of {events} events consumed after {timeout_s:.0f}s; "
                               f"see {worker.work_dir / 'worker.log'}")
        time.sleep(POLL_SECONDS)


# ---- 3. Tally throughput ----------------------------------------------------------------------

def run_tally(bootstrap: str, prefix: str, events: int, work_dir: Path, app_id: str, plan: RunPlan,
              profile=None) -> dict:
    """The whole worker over the pre-loaded input: throughput, CPU per million, memory over the run.

    `profile(pid)`, if given, is called once the run is past its warm-up (e.g. to attach py-spy)."""
    worker = Worker(work_dir, bootstrap, prefix, app_id, plan).start()
    try:
        profiler, hot = None, None
        if profile is not None:
            watch(worker, int(events * WARM_UP_FRACTION), timeout_s=max(600, events / 1000))
            profiler = profile(worker.pid)
        samples = watch(worker, events, timeout_s=max(600, events / 1000))
        if profiler is not None:
            hot = profiler.finish()
        stats = worker.stats()
        stored, distinct = worker.query("SELECT count(), uniqExact(event_id) FROM user_actions")[0]
    finally:
        worker.stop()
    window = measured_window(samples, events)
    return {"events": window.events, "seconds": round(window.seconds, 3), "events_per_s": round(window.events_per_s),
            "cpu_seconds_per_million": round(window.cpu_seconds_per_million, 1),
            "memory": memory_profile(samples, events),
            "events_sent": events, "stored_rows": int(stored), "distinct_event_ids": int(distinct),
            "delivered": stats["delivered"], "dead_lettered": stats["dead_lettered"],
            "duplicates": stats["duplicates"], "rerouted": stats["rerouted"],
            "inserts": stats["sink"]["inserts"], "insert_seconds": stats["sink"]["insert_seconds"],
            "max_batch_rows": stats["sink"]["max_batch_rows"], "metric_updates": stats["metric_updates"],
            "stage_events": stats["stages"]["events"], "time_split_us_per_event": time_split(samples, events),
            **({"profile": hot} if hot is not None else {})}


# ---- 4. latency -------------------------------------------------------------------------------

def restamp(value: bytes, now_ms: int) -> bytes:
    """A new event like this one, happening now: event time = send time, duration kept, a fresh event id
    (the latency run may replay the generated traffic more than once)."""
    from streams.contract import UserAction, new_event_id
    action = UserAction.FromString(value)
    duration = action.end_epoch_ms - action.start_epoch_ms
    action.start_epoch_ms, action.end_epoch_ms = now_ms, now_ms + duration
    action.event_id = new_event_id(now_ms)
    return action.SerializeToString()


STORED_HIGH_OFFSETS = "SELECT kafka_partition, max(kafka_offset) FROM user_actions GROUP BY kafka_partition"


def poll_visibility(worker: Worker, stop: threading.Event, polls: list) -> None:
    """Record (when the answer came, {partition: highest stored offset}) until `stop` is set."""
    while not stop.is_set():
        rows = worker.query(STORED_HIGH_OFFSETS)
        polls.append((time.time(), {int(p): int(high) for p, high in rows}))
        stop.wait(VISIBILITY_POLL_SECONDS)


LATENCY_PRIMER = 100  # events sent and stored before the steady load: the worker has its partitions


def run_latency(bootstrap: str, prefix: str, traffic: Traffic, work_dir: Path, app_id: str, plan: RunPlan) -> dict:
    """A fresh worker; `latency_rate`/s for `latency_seconds` while polling ClickHouse for stored offsets.

    The first 10% of the steady run (at least 2 s) is its warm-up: sent, but not measured."""
    offered = int(plan.latency_rate * plan.latency_seconds)
    needed = LATENCY_PRIMER + offered
    messages = (traffic.messages * (needed // len(traffic.messages) + 1))[:needed]
    topics = asyncio.run(create_pipeline_topics(bootstrap, prefix, plan.partitions))
    asyncio.run(preload(bootstrap, topics.user_profiles, traffic.profiles, plan.partitions))
    # single messages, as a client without envelopes sends them one by one; with --envelope, what the
    # SDK sends: each 10 ms tick's events packed per partition
    envelope_partitions = plan.partitions if plan.envelope > 1 else None
    worker = Worker(work_dir, bootstrap, prefix, app_id, plan).start()
    try:
        asyncio.run(send_steady(bootstrap, topics.user_actions, messages[:LATENCY_PRIMER], plan.latency_rate, restamp,
                                envelope_partitions))
        watch(worker, LATENCY_PRIMER, timeout_s=300)
        polls: list[tuple[float, dict[int, int]]] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll_visibility, args=(worker, stop, polls), daemon=True)
        poller.start()
        try:
            sent: list[Sent] = asyncio.run(send_steady(bootstrap, topics.user_actions, messages[LATENCY_PRIMER:],
                                                       plan.latency_rate, restamp, envelope_partitions))
            watch(worker, needed, timeout_s=300)
            time.sleep(VISIBILITY_POLL_SECONDS * 3)  # a poll after the last insert
        finally:
            stop.set()
            poller.join()
        stats = worker.stats()
        measured_from_s = sent[0].sent_s + max(2.0, plan.latency_seconds * WARM_UP_FRACTION)
        # where the time goes: send -> the worker processing the batch (ingested_at); the rest is the insert
        processed = worker.query(
            "SELECT quantiles(0.5, 0.95, 0.99)(toUnixTimestamp64Milli(ingested_at) - start_epoch_ms) "
            f"FROM user_actions WHERE start_epoch_ms >= {int(measured_from_s * 1000)}")[0][0]
    finally:
        worker.stop()
    measured = [s for s in sent if s.sent_s >= measured_from_s]
    latencies = visible_after([(s.partition, s.offset, s.sent_s) for s in measured], polls)
    seen_ms = [latency * 1000 for latency in latencies if latency is not None]
    sending_s = sent[-1].sent_s - sent[0].sent_s
    return {"offered_rate": plan.latency_rate, "events": len(sent), "seconds": round(sending_s, 2),
            "achieved_rate": round(len(sent) / sending_s) if sending_s else 0, "measured": len(measured),
            "seen": len(seen_ms), "p50_ms": round(percentile(seen_ms, 50)), "p95_ms": round(percentile(seen_ms, 95)),
            "p99_ms": round(percentile(seen_ms, 99)), "max_ms": round(max(seen_ms)),
            "to_processed_ms": {"p50": round(processed[0]), "p95": round(processed[1]), "p99": round(processed[2])},
            "polls": len(polls), "inserts": stats["sink"]["inserts"], "delivered": stats["delivered"]}
