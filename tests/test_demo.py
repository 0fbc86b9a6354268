"""The main job, `tally demo`, as a user runs it (here against the session's broker, small traffic)."""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.kafka
def test_demo_runs_end_to_end_and_its_live_counts_match_clickhouse(bootstrap, tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "TALLY_HMAC_KEY"}  # as a newcomer runs it
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--bootstrap", bootstrap, "--data-dir", str(tmp_path / "demo"),
         "--days", "3", "--users", "40", "--events-per-day", "400"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "active users on" in out and "most frequent actions" in out
    said = re.search(r"ClickHouse says (\d+) distinct users on (\S+); the live table says (\d+)", out)
    assert said and said.group(1) == said.group(3) and int(said.group(1)) > 0, out[-2000:]
    stored = int(re.findall(r"stored\s+([\d,]+)", out)[-1].replace(",", ""))
    assert stored > 0 and "stopped." in out
    # a normal start, run and stop: nothing in the worker's log asks for a person
    log = (tmp_path / "demo" / "worker.log").read_text()
    assert [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line] == []

    # the lookup the demo suggests finds that person by email, with no worker running
    lookup = re.search(r"looked up by email: tally (report user_stats .*)", out)
    assert lookup, out[-2000:]
    answer = subprocess.run([sys.executable, "-m", "streams.cli", *lookup.group(1).split(), "--no-chart",
                             "--format", "csv"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert answer.returncode == 0, answer.stderr
    rows = list(csv.DictReader(io.StringIO(answer.stdout)))
    assert rows and sum(int(row["events"]) for row in rows) > 0, answer.stdout
