"""`tally bench --backfill`: a month and more of history through `tally publish`, as the README says.

`tally generate --jsonl` writes 60 days of traffic (about `plan.events` events, default 1M) to a
file; a worker runs; `tally publish FILE` sends it in envelopes and waits for the worker's report.
The clock runs from the publish command's start to its report (every event stored, deduplicated
or dead-lettered, as the store says), so the figure is what a user onboarding a tool waits.
"""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from . import procstat
from .harness import RunPlan, Worker, create_pipeline_topics

DAYS = 60
USERS = 2_000
REPORT = re.compile(r"taken by the worker: stored (\d+), duplicates (\d+), dead-lettered (\d+)")
PUBLISHED = re.compile(r"published (\d+), rejected (\d+)")


def write_history(path: Path, events: int) -> int:
    per_weekday = int(events / (DAYS * 5 / 7 + DAYS * 2 / 7 * 0.2)) + 1  # weekends get a fifth
    subprocess.run([sys.executable, "-m", "streams.cli", "generate", "--days", str(DAYS), "--users", str(USERS),
                    "--events-per-day", str(per_weekday), "--jsonl", str(path)], check=True,
                   capture_output=True, text=True)
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run(bootstrap: str, work_dir: Path, plan: RunPlan, say=print) -> dict:
    history = work_dir / "history.jsonl"
    say(f"writing {DAYS} days of history (about {plan.events:,} events) ...")
    lines = write_history(history, plan.events)
    size_mb = history.stat().st_size / 1e6
    prefix = "backfill-"
    asyncio.run(create_pipeline_topics(bootstrap, prefix, plan.partitions))
    worker = Worker(work_dir / "worker", bootstrap, prefix, f"{prefix}tally", plan).start()
    try:
        say(f"tally publish {lines:,} lines ({size_mb:,.0f} MB) with a worker running ...")
        began = time.monotonic()
        cpu_before = procstat.sample(worker.pid).cpu_seconds
        publish = subprocess.run(
            [sys.executable, "-m", "streams.cli", "publish", str(history), "--bootstrap", bootstrap,
             "--topic-prefix", prefix, "--app-id", f"{prefix}tally", "--data-dir", str(worker.work_dir)],
            capture_output=True, text=True)
        seconds = time.monotonic() - began
        worker_cpu = procstat.sample(worker.pid).cpu_seconds - cpu_before
        stored_rows = worker.query("SELECT count(DISTINCT event_id) FROM user_actions")[0][0]
    finally:
        worker.stop()
    report, published = REPORT.search(publish.stdout), PUBLISHED.search(publish.stdout)
    if publish.returncode != 0 or report is None or published is None:
        raise RuntimeError(f"tally publish exited {publish.returncode}: {publish.stdout[-800:]} {publish.stderr[-800:]}")
    stored, duplicates, dead = map(int, report.groups())
    say(f"    {lines:,} events in {seconds:.1f} s: {lines / seconds * 60:,.0f} events/min, stored {stored:,}")
    return {"backfill": {"events": lines, "file_mb": round(size_mb, 1), "days": DAYS, "users": USERS,
                         "seconds": round(seconds, 2), "events_per_min": round(lines / seconds * 60),
                         "published": int(published.group(1)), "rejected": int(published.group(2)),
                         "stored": stored, "duplicates": duplicates, "dead_lettered": dead,
                         "distinct_rows": int(stored_rows), "worker_cpu_seconds": round(worker_cpu, 1),
                         "partitions": plan.partitions}}
