"""`tally publish FILE` as a backfill job: envelopes, progress, and a report of what the worker
made of the events, checked against the store and an independent count of the file."""
from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import subprocess
import sys

import pytest

from conftest import ROOT, read_topic
from streams.ops.backfill import Progress
from streams.producer.generator import generate_actions
from streams.producer.publish import action_to_json


def test_progress_says_events_per_second_and_time_left():
    now = [100.0]
    out = io.StringIO()
    progress = Progress(total_chars=1000, out=out, clock=lambda: now[0])
    progress(10, 50)  # too soon after the start: nothing yet
    now[0] += 11
    progress(550, 500)
    assert out.getvalue() == "sent 550 events  50 events/s  ETA 0:11  (50% of the file)\n"


@pytest.mark.kafka
def test_a_history_file_is_published_in_envelopes_and_its_outcome_reported(pipeline_env, tmp_path):
    history = list(generate_actions(seed=3, start_day=dt.date(2026, 9, 1), days=30, users=80, events_per_day=120))
    lines = [json.dumps(action_to_json(a)) for a in history]
    lines.insert(5, lines[0])  # a repeated event
    lines.insert(9, "{not json")  # a line refused by the command itself
    base = history[0].start_epoch_ms
    # two bad events side by side, so the same envelope carries both
    lines[20:20] = [json.dumps({"command": "x", "user": "a@example.com", "app": "bi", "start_epoch_ms": base,
                                "end_epoch_ms": base - 5000}),
                    json.dumps({"command": "y", "user": "a@example.com", "app": "bi", "start_epoch_ms": base,
                                "schema_version": 99})]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines) + "\n")

    worker = pipeline_env.worker().start().wait_assigned()
    done = subprocess.run([sys.executable, "-m", "streams.cli", "publish", str(path), "--bootstrap",
                           pipeline_env.bootstrap, "--topic-prefix", pipeline_env.prefix, "--app-id",
                           pipeline_env.app_id, "--data-dir", str(worker.data_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 1, done.stderr  # one line was rejected
    assert done.stderr.splitlines()[0].startswith("line 10: not JSON")
    assert done.stdout.splitlines() == [
        f"published {len(history) + 3}, rejected 1",
        f"taken by the worker: stored {len(history)}, duplicates 1, dead-lettered 2",
        "  dead letters end_before_start: 1  (tally dlq inspect --reason end_before_start)",
        "  dead letters unsupported_schema_version: 1  (tally dlq inspect --reason unsupported_schema_version)"]
    # the report is what the store holds: every valid event once, both letters of one envelope
    assert worker.query("SELECT count(), uniqExact(event_id) FROM user_actions FINAL") == [[len(history)] * 2]
    letters = worker.query("SELECT reason, source_partition, source_offset FROM dead_letters FINAL ORDER BY reason")
    assert [reason for reason, _, _ in letters] == ["end_before_start", "unsupported_schema_version"]
    assert letters[0][1:] == letters[1][1:], "the two bad events were meant to share one envelope"
    # in envelopes (a few messages), each in the partition of its users: nothing re-routed
    assert worker.stats()["rerouted"] == 0
    assert len(asyncio.run(read_topic(pipeline_env.bootstrap, pipeline_env.topics.user_actions))) < len(history) / 10

