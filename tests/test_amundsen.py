"""Amundsen feeds Tally by installing it: the real amundsen-frontend 4.3.0 from PyPI and Tally's
producer side in a fresh virtualenv (no conflict `pip check` can see), Amundsen's Flask app in test
mode calling its own `@action_logging` and front-end log endpoint, a worker on the session's broker
storing what the entry-point plugin sent; with the broker down, the request never notices."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

AMUNDSEN = "amundsen-frontend==4.3.0"
SCRIPT = ROOT / "tests" / "amundsen" / "amundsen_app.py"


@pytest.fixture(scope="module")
def amundsen_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("amundsen") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "install", AMUNDSEN, str(ROOT)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def run_amundsen(venv, env: dict, flush_timeout: float) -> list[dict]:
    done = subprocess.run([str(venv / "bin" / "python"), str(SCRIPT), str(flush_timeout)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_producer_side_installs_beside_amundsen_without_conflicts(amundsen_venv):
    python = str(amundsen_venv / "bin" / "python")
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    installed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    names = {package["name"].lower() for package in json.loads(installed.stdout)}
    assert {"tally", "amundsen-frontend", "aiokafka", "protobuf"} <= names
    assert names.isdisjoint({"chdb", "faust-streaming", "clickhouse-connect", "pandas", "pyarrow"})


def test_amundsens_calls_and_front_end_events_land_in_clickhouse(amundsen_venv, bootstrap, tmp_path):
    from streams.stages.scrub import Scrubber, load_policy
    prefix = f"a{uuid.uuid4().hex[:8]}-"
    worker = WorkerProcess(tmp_path / "worker", bootstrap, prefix, f"tally-{prefix[:-1]}", [])
    try:
        worker.start().wait_assigned()
        env = {**os.environ, "TALLY_BOOTSTRAP": bootstrap, "TALLY_TOPIC_PREFIX": prefix}
        answer, flushed = run_amundsen(amundsen_venv, env, flush_timeout=60)
        assert answer["log_event_status"] == 200 and flushed["flushed"] is True, flushed
        deadline = time.monotonic() + 60
        while len(rows := worker.query(
                "SELECT command, user, keyword_args_json, output, error, has_error, target_id, target_type, label, "
                "location, value, properties['position'], resource_key, app FROM user_actions FINAL ORDER BY ts")) < 3:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
    finally:
        worker.stop()
    user = Scrubber(load_policy(hmac_key=os.environ.get("TALLY_HMAC_KEY", ""))).scrub_user("test@email.com")
    by_command = {row[0]: row for row in rows}
    assert set(by_command) == {"_get_table_metadata", "_update_table_owner", "click"}
    assert {row[1] for row in rows} == {user} and {row[13] for row in rows} == {"amundsen"}
    metadata = by_command["_get_table_metadata"]
    assert json.loads(metadata[2])["table_key"] == "hive://gold.core/orders" and json.loads(metadata[3])["columns"] == 12
    assert metadata[12] == "hive://gold.core/orders"
    failed = by_command["_update_table_owner"]
    assert (failed[4], failed[5]) == ("ValueError: owner service unavailable", 1)
    click = by_command["click"]
    assert click[6:12] == ["tag::payments", "tag", "payments", "table_page", "1", "3"]


def test_with_the_broker_down_amundsen_answers_as_before(amundsen_venv):
    env = {**os.environ, "TALLY_BOOTSTRAP": "127.0.0.1:1"}
    answer, flushed = run_amundsen(amundsen_venv, env, flush_timeout=1)
    assert answer["log_event_status"] == 200
    assert flushed["flushed"] is False and flushed["stats"]["buffered"] == 3 and flushed["stats"]["internal_errors"] == 0
