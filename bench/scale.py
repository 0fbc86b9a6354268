"""`tally bench --scale`: one worker against two in one consumer group, over the same pre-loaded input.

Each run reads the whole input in a consumer group of its own: first one worker, then two that
split the partitions (each with its own embedded ClickHouse, as deployed workers each have a
store or a shard). Throughput counts from 10% of the input consumed to all of it stored; CPU is
each worker process's own (/proc), so the per-worker cost sizes a deployment: events/s per worker
core = 1e6 / CPU seconds per million events. This machine has 2 cores shared with the broker and
the stores, so two workers show how far a second worker goes here, not a scaling law.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import procstat
from .harness import RunPlan, Worker, load_input
from .measure import WARM_UP_FRACTION
from .load import generate

POLL_SECONDS = 0.5


def _run_group(bootstrap: str, prefix: str, events: int, work_dir: Path, app_id: str, plan: RunPlan,
               size: int) -> dict:
    workers = [Worker(work_dir / f"w{i}", bootstrap, prefix, app_id, plan).start() for i in range(size)]
    try:
        deadline = time.monotonic() + 120
        while sum(len(w.stats()["consumer_lag"]) for w in workers) < plan.partitions:  # the group has settled
            if time.monotonic() > deadline:
                raise TimeoutError("the workers did not split the partitions")
            time.sleep(POLL_SECONDS)
        warm = int(events * WARM_UP_FRACTION)
        start = None
        timeout = time.monotonic() + max(600, events / 1000)
        while True:
            for worker in workers:
                worker.check_alive()
            consumed = sum(w.stats()["consumed"] for w in workers)
            now = time.monotonic()
            if start is None and consumed >= warm:
                start = (now, consumed, [procstat.sample(w.pid).cpu_seconds for w in workers])
            if consumed >= events:
                stored = sum(w.query("SELECT count() FROM user_actions")[0][0] for w in workers)
                if stored >= events:
                    break
            if now > timeout:
                raise TimeoutError(f"{consumed} of {events} consumed")
            time.sleep(POLL_SECONDS)
        end = (time.monotonic(), [procstat.sample(w.pid).cpu_seconds for w in workers])
        seconds = end[0] - start[0]
        measured = events - start[1]
        cpu = [after - before for before, after in zip(start[2], end[1])]
        final = [w.stats() for w in workers]
        shares = [stats["consumed"] for stats in final]
        # each worker's inserts into its own embedded ClickHouse: rows per second of inserting
        insert_rates = [round(st["sink"]["rows"] / st["sink"]["insert_seconds"]) if st["sink"]["insert_seconds"] else None
                        for st in final]
    finally:
        for worker in workers:
            worker.stop()
    return {"workers": size, "events": measured, "seconds": round(seconds, 2),
            "events_per_s": round(measured / seconds),
            "cpu_seconds_per_million_per_worker": [round(c * 1e6 / (measured * share / sum(shares)), 1)
                                                   for c, share in zip(cpu, shares)],
            "cpu_seconds_per_million": round(sum(cpu) * 1e6 / measured, 1),
            "consumed_per_worker": shares, "insert_rows_per_s_per_worker": insert_rates}


def run(bootstrap: str, work_dir: Path, plan: RunPlan, say=print) -> dict:
    import asyncio
    import uuid
    prefix = f"scale-{uuid.uuid4().hex[:8]}-"
    say(f"generating and pre-loading {plan.events:,} events ({plan.partitions} partitions, "
        f"envelopes of {plan.envelope}) ...")
    asyncio.run(load_input(bootstrap, prefix, generate(plan.events), plan.partitions, plan.envelope))
    results = {"kind": "scale", "events": plan.events, "partitions": plan.partitions, "envelope": plan.envelope}
    for size in (1, 2):
        say(f"{size} worker{'s' if size > 1 else ''} in one group ...")
        results[f"workers_{size}"] = run = _run_group(bootstrap, prefix, plan.events, work_dir / f"group{size}",
                                                     f"{prefix}group{size}", plan, size)
        say(f"    {run['events_per_s']:,} events/s, {run['cpu_seconds_per_million']} CPU s per million events")
    one, two = results["workers_1"], results["workers_2"]
    results["speedup"] = round(two["events_per_s"] / one["events_per_s"], 2)
    results["events_per_s_per_worker_core"] = round(1e6 / one["cpu_seconds_per_million"])
    return results
