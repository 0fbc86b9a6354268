"""`tally bench --soak MINUTES`: one worker for a long time at half its capacity, fed by the SDK.

First a short throughput run over pre-loaded envelopes measures the worker's capacity (unless
--soak-rate is given). Then a fresh worker takes half of that from the SDK's `Tracker`s (one per
app, events restamped to now, scrubbed at the source as a deployment does), while an analyst's
full-table query runs every few seconds (`--soak-query-every`, 5 s; 0 for none). Probe events (a
tracker of their own, one every 0.2 s, round-robin over the partitions) give produce-to-queryable
latency: a probe is queryable at the first poll whose newest stored probe of its partition is at
least as new.

Each quarter of the run reports the worker's RSS at its start and end, the consumer lag, p95
probe latency, the analyst query's median time and the dead letters; at the end every event the
trackers delivered must be a row.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import threading
import time
from pathlib import Path

from streams.contract import UserAction, partition_for_user

from . import procstat
from .harness import RunPlan, Worker, create_pipeline_topics, load_input, run_tally
from .load import generate, preload
from .measure import percentile, visible_after

CAPACITY_EVENTS = 300_000
CAPACITY_ENVELOPE = 100
TEMPLATES = 50_000          # generated events replayed, restamped to now
PROBE_APP = "soak-probe"
PROBE_EVERY_S = 0.2
POLL_EVERY_S = 0.1
ANALYST_EVERY_S = 5.0
# a whole-table scan that grows with the run; one thread, as an analyst's query on a box the pipeline
# shares should be (uncapped, chDB takes every core and the pipeline waits: docs/faults.md)
ANALYST_SQL = ("SELECT app, toStartOfDay(toDateTime(intDiv(start_epoch_ms, 1000))) AS day, uniqExact(user), "
               "count(), quantile(0.95)(end_epoch_ms - start_epoch_ms) FROM user_actions GROUP BY app, day "
               "SETTINGS max_threads = 1")
PROBES_SQL = (f"SELECT kafka_partition, max(start_epoch_ms) FROM user_actions "
              f"WHERE app = '{PROBE_APP}' AND ds >= today() - 1 GROUP BY kafka_partition")


def measure_capacity(bootstrap: str, work_dir: Path, plan: RunPlan, say) -> int:
    prefix = "soak-capacity-"
    traffic = generate(CAPACITY_EVENTS)
    asyncio.run(load_input(bootstrap, prefix, traffic, plan.partitions, CAPACITY_ENVELOPE))
    run = run_tally(bootstrap, prefix, CAPACITY_EVENTS, work_dir / "capacity", f"{prefix}tally", plan)
    say(f"    capacity {run['events_per_s']:,} events/s")
    return run["events_per_s"]


def templates(count: int) -> list[tuple[str, dict]]:
    """(app, the fields `Tracker.record` takes) for generated events; times are set when sent."""
    out = []
    for key, value in generate(count).messages:
        action = UserAction.FromString(value)
        fields = {descriptor.name: value for descriptor, value in action.ListFields()
                  if descriptor.name not in ("event_id", "app", "schema_version", "properties")}
        fields["duration_ms"] = action.end_epoch_ms - action.start_epoch_ms
        if action.properties:
            fields["properties"] = dict(action.properties)
        out.append((action.app, fields))
    return out


class Producers:
    """One tracker per app (and one for probes), paced in 10 ms ticks from a thread of their own."""

    def __init__(self, bootstrap: str, topic: str, rate: float, partitions: int, events: list[tuple[str, dict]]):
        from streams.producer.tracker import Tracker
        self.rate, self.partitions, self.events = rate, partitions, events
        options = {"buffer_size": 100_000}
        self.trackers = {app: Tracker(bootstrap, app=app, topic=topic, **options) for app in {a for a, _ in events}}
        self.probe = Tracker(bootstrap, app=PROBE_APP, topic=topic, **options)
        self.probes: list[tuple[int, int, float]] = []  # (partition, event ms, sent at)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-producers", daemon=True)

    def start(self) -> "Producers":
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        next_probe = started
        probe_users = [f"probe-{i}" for i in range(self.partitions * 8)]
        while not self._stop.is_set():
            now = time.monotonic()
            due = int((now - started) * self.rate)
            now_ms = int(time.time() * 1000)
            while self.sent < due:
                app, fields = self.events[self.sent % len(self.events)]
                record = dict(fields, start_epoch_ms=now_ms, end_epoch_ms=now_ms + fields["duration_ms"])
                del record["duration_ms"]
                self.trackers[app].record(record)
                self.sent += 1
            if now >= next_probe:
                user = probe_users[len(self.probes) % len(probe_users)]
                sent_at = time.time()
                probe_ms = int(sent_at * 1000)
                self.probe.record({"command": "probe", "user": user, "start_epoch_ms": probe_ms,
                                   "end_epoch_ms": probe_ms})
                self.probes.append((partition_for_user(user, self.partitions), probe_ms, sent_at))
                next_probe += PROBE_EVERY_S
            self._stop.wait(0.01)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        trackers = [*self.trackers.values(), self.probe]
        for tracker in trackers:
            tracker.close(timeout=120)
        stats = [tracker.stats() for tracker in trackers]
        return {name: sum(getattr(s, name) for s in stats)
                for name in ("tracked", "delivered", "dropped", "failed", "internal_errors")}


class Observer:
    """Polls the worker: probe visibility every POLL_EVERY_S, the analyst's query every ANALYST_EVERY_S."""

    def __init__(self, worker: Worker, analyst_every_s: float = ANALYST_EVERY_S):
        self.worker, self.analyst_every_s = worker, analyst_every_s
        self.polls: list[tuple[float, dict[int, int]]] = []
        self.analyst: list[tuple[float, float]] = []  # (when, seconds taken)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll_probes, daemon=True)]
        if analyst_every_s > 0:
            self._threads.append(threading.Thread(target=self._analyst, daemon=True))

    def start(self) -> "Observer":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _poll_probes(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.worker.query(PROBES_SQL)
                self.polls.append((time.time(), {int(p): int(ms) for p, ms in rows}))
            except Exception:
                pass
            self._stop.wait(POLL_EVERY_S)

    def _analyst(self) -> None:
        while not self._stop.wait(self.analyst_every_s):
            began = time.monotonic()
            try:
                self.worker.query(ANALYST_SQL)
                self.analyst.append((time.time(), time.monotonic() - began))
            except Exception:
                pass


def quarter_rows(samples: list[dict], probes: list, polls: list, analyst: list, began: float, seconds: float) -> list:
    rows = []
    latencies = visible_after(probes, polls)
    for quarter in range(4):
        start, end = began + seconds * quarter / 4, began + seconds * (quarter + 1) / 4
        inside = [s for s in samples if start <= s["at"] <= end]
        if not inside:
            continue
        seen = [lat * 1000 for (_, _, sent_at), lat in zip(probes, latencies)
                if start <= sent_at < end and lat is not None]
        unseen = sum(1 for (_, _, sent_at), lat in zip(probes, latencies) if start <= sent_at < end and lat is None)
        queries = [taken * 1000 for at, taken in analyst if start <= at < end]
        rows.append({
            "quarter": quarter + 1, "minutes": [round((start - began) / 60, 1), round((end - began) / 60, 1)],
            "rss_mb": [inside[0]["rss_mb"], inside[-1]["rss_mb"]],
            "lag_max": max(s["lag"] for s in inside), "lag_end": inside[-1]["lag"],
            "events_per_s": round((inside[-1]["consumed"] - inside[0]["consumed"]) /
                                  max(1e-9, inside[-1]["at"] - inside[0]["at"])),
            "probes": len(seen) + unseen, "probes_unseen": unseen,
            "p50_ms": round(percentile(seen, 50)) if seen else None,
            "p95_ms": round(percentile(seen, 95)) if seen else None,
            "analyst_queries": len(queries), "analyst_median_ms": round(statistics.median(queries)) if queries else None,
            "dead_lettered": inside[-1]["dead_lettered"] - inside[0]["dead_lettered"],
        })
    return rows


def run(bootstrap: str, work_dir: Path, plan: RunPlan, minutes: float, rate: float | None = None,
        analyst_every_s: float = ANALYST_EVERY_S, say=print) -> dict:
    os.environ.setdefault("TALLY_HMAC_KEY", secrets.token_hex(32))  # the SDK and the worker share the key
    capacity = None
    if rate is None:
        say(f"capacity: one worker over {CAPACITY_EVENTS:,} pre-loaded events in envelopes ...")
        capacity = measure_capacity(bootstrap, work_dir, plan, say)
        rate = capacity / 2
    say(f"soak: {rate:,.0f} events/s from the SDK for {minutes:g} min ...")
    prefix = "soak-"
    topics = asyncio.run(create_pipeline_topics(bootstrap, prefix, plan.partitions))
    asyncio.run(preload(bootstrap, topics.user_profiles, generate(1_000).profiles, plan.partitions))
    events = templates(TEMPLATES)
    worker = Worker(work_dir / "soak", bootstrap, prefix, f"{prefix}tally", plan).start()
    samples: list[dict] = []
    try:
        producers = Producers(bootstrap, topics.user_actions, rate, plan.partitions, events).start()
        observer = Observer(worker, analyst_every_s).start()
        began = time.time()
        seconds = minutes * 60
        next_say = began + 60
        while time.time() - began < seconds:
            worker.check_alive()
            stats = worker.stats()
            samples.append({"at": time.time(), "rss_mb": procstat.sample(worker.pid).rss_mb,
                            "lag": sum(stats["consumer_lag"].values()), "consumed": stats["consumed"],
                            "dead_lettered": stats["dead_lettered"]})
            if time.time() >= next_say:
                say(f"    {(time.time() - began) / 60:4.1f} min: sent {producers.sent:,}, consumed "
                    f"{stats['consumed']:,}, lag {samples[-1]['lag']:,}, RSS {samples[-1]['rss_mb']:,.0f} MB")
                next_say += 60
            time.sleep(1.0)
        sdk = producers.stop()
        say("    draining ...")
        deadline = time.monotonic() + 300
        while True:
            stats = worker.stats()
            stored = worker.query("SELECT count() FROM user_actions")[0][0]
            if stored + stats["dead_lettered"] >= sdk["delivered"] or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        time.sleep(POLL_EVERY_S * 5)  # a probe poll after the last insert
        observer.stop()
        distinct = worker.query("SELECT uniqExact(event_id) FROM user_actions")[0][0]
        final = worker.stats()
    finally:
        worker.stop()
    quarters = quarter_rows(samples, producers.probes, observer.polls, observer.analyst, began, seconds)
    return {"soak": {"minutes": minutes, "rate": round(rate), "analyst_every_s": analyst_every_s,
                     "capacity_events_per_s": capacity,
                     "partitions": plan.partitions, "sdk": sdk, "stored_rows": int(stored),
                     "distinct_event_ids": int(distinct), "consumed": final["consumed"],
                     "dead_lettered": final["dead_lettered"], "duplicates": final["duplicates"],
                     "quarters": quarters}}


def table(results: dict) -> str:
    soak = results["soak"]
    query = soak.get("analyst_every_s", ANALYST_EVERY_S)
    lines = [f"soak {soak['minutes']:g} min at {soak['rate']:,} events/s "
             f"(capacity {soak['capacity_events_per_s'] or 'not measured'}), {soak['partitions']} partitions, "
             + (f"the analyst query every {query:g} s" if query else "no analyst query"), "",
             "| quarter | minutes | RSS start -> end MB | lag max / end (messages) | events/s | p50 / p95 ms | analyst query ms | dead letters |",
             "|---|---|---|---|---|---|---|---|"]
    for q in soak["quarters"]:
        lines.append(f"| {q['quarter']} | {q['minutes'][0]}-{q['minutes'][1]} | {q['rss_mb'][0]:,.0f} -> "
                     f"{q['rss_mb'][1]:,.0f} | {q['lag_max']:,} / {q['lag_end']:,} | {q['events_per_s']:,} | "
                     f"{q['p50_ms']} / {q['p95_ms']} | {q['analyst_median_ms']} | {q['dead_lettered']} |")
    sdk = soak["sdk"]
    lines.append("")
    lines.append(f"SDK: tracked {sdk['tracked']:,}, delivered {sdk['delivered']:,}, dropped {sdk['dropped']:,}, "
                 f"failed {sdk['failed']:,}; stored rows {soak['stored_rows']:,} "
                 f"({soak['distinct_event_ids']:,} distinct), dead letters {soak['dead_lettered']:,}")
    return "\n".join(lines)
