"""One person, one pseudonym for the life of a deployment: the data directory's own key, kept
owner-only beside the data; a worker with another key refused; people found by email."""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, publish
from streams.config import Settings
from streams.contract import UserAction, new_event_id
from streams.stages.scrub import Scrubber, SourceScrubber, load_policy
from streams.store import pseudonym_key

EMAILS = ["ada.lovelace@example.com", "alan.turing@example.com"]


def without_key() -> dict[str, str]:
    """This process's environment without TALLY_HMAC_KEY: a data directory's own key is used."""
    return {name: value for name, value in os.environ.items() if name != "TALLY_HMAC_KEY"}


def test_a_data_directory_makes_its_key_once_owner_only(tmp_path):
    first = pseudonym_key.ensure_local_key(tmp_path)
    assert len(first) == 64
    assert stat.S_IMODE(pseudonym_key.key_path(tmp_path).stat().st_mode) == 0o600
    assert pseudonym_key.ensure_local_key(tmp_path) == first
    assert pseudonym_key.with_key(Settings(data_dir=tmp_path), create=False).hmac_key == first
    # the deployment's key wins over the file; a reader never makes a key
    assert pseudonym_key.with_key(Settings(data_dir=tmp_path, hmac_key="prod"), create=True).hmac_key == "prod"
    assert pseudonym_key.with_key(Settings(data_dir=tmp_path / "new"), create=False).hmac_key == ""
    assert not (tmp_path / "new").exists()


def test_the_store_keeps_the_first_key_fingerprint_and_refuses_another(ch):
    pseudonym_key.check_store(ch, "key-one")
    pseudonym_key.check_store(ch, "key-one")
    with pytest.raises(pseudonym_key.KeyMismatch, match="TALLY_HMAC_KEY"):
        pseudonym_key.check_store(ch, "key-two")
    stored = ch.query("SELECT value FROM tally_meta FINAL").result_rows
    assert stored == [(pseudonym_key.fingerprint("key-one"),)] and "key-one" not in stored[0][0]


def test_a_producer_without_the_key_removes_secrets_but_leaves_pseudonyms_to_the_worker():
    action = UserAction(event_id="e1", app="bi", command="login", user=EMAILS[0], schema_version=1,
                        keyword_args_json='{"password": "hunter2", "owner": "%s"}' % EMAILS[1])
    SourceScrubber(load_policy(hmac_key=SourceScrubber.NO_KEY)).scrub_action(action)
    assert action.user == EMAILS[0]  # the worker pseudonymises it with the deployment's key
    assert "hunter2" not in action.keyword_args_json


def actions(day: dt.date) -> list[UserAction]:
    start = int(dt.datetime(day.year, day.month, day.day, 9, tzinfo=dt.timezone.utc).timestamp() * 1000)
    return [UserAction(event_id=new_event_id(start + i * 60_000), app="catalog", command="search_table",
                       user=EMAILS[i % 2], schema_version=1, start_epoch_ms=start + i * 60_000,
                       end_epoch_ms=start + i * 60_000 + 40) for i in range(5)]


def tally(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


@pytest.mark.kafka
def test_a_worker_keeps_its_key_refuses_another_and_people_are_found_by_email(pipeline_env):
    sent = actions(dt.date.today() - dt.timedelta(days=2))
    asyncio.run(publish(pipeline_env.bootstrap, pipeline_env.topics.user_actions,
                        [(a.user.encode(), a.SerializeToString()) for a in sent]))
    env = without_key()
    worker = pipeline_env.worker("w1", env=env).start()
    worker.wait_consumed(len(sent))
    data_dir: Path = worker.data_dir
    key = pseudonym_key.read_local_key(data_dir)
    assert key and stat.S_IMODE(pseudonym_key.key_path(data_dir).stat().st_mode) == 0o600
    pseudonym = Scrubber(load_policy(hmac_key=key)).scrub_user(EMAILS[0])
    assert pseudonym != EMAILS[0]
    assert worker.query("SELECT user, count() FROM user_actions GROUP BY user ORDER BY user") == sorted(
        [[pseudonym, 3], [Scrubber(load_policy(hmac_key=key)).scrub_user(EMAILS[1]), 2]])
    worker.stop()

    # restarted with the key it made: the same pseudonyms (no refusal)
    again = pipeline_env.worker("w1", env=env).start()
    again.stop()

    # another key for the same data: refused, in one line that says what to do
    refused = tally("worker", "--data-dir", str(data_dir), "--bootstrap", pipeline_env.bootstrap,
                    "--topic-prefix", pipeline_env.prefix, "--app-id", pipeline_env.app_id,
                    env={**env, "TALLY_HMAC_KEY": "another-key"})
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.startswith("error: the pseudonym key") and "TALLY_HMAC_KEY" in refused.stderr
    assert "Traceback" not in refused.stderr

    # with no worker running, a person is found by the email a human knows
    report = tally("report", "user_stats", "--data-dir", str(data_dir), "--user", EMAILS[0], "--no-chart",
                   "--format", "csv", env=env)
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines()[1].split(",")[:3] == ["Search Table", "search_table", "3"]
    assert pseudonym in report.stderr and EMAILS[0] in report.stderr
    query = tally("query", "--data-dir", str(data_dir), "--format", "csv", "--param", f"who={EMAILS[1]}",
                  "SELECT count() FROM user_actions WHERE user = {who:String}", env=env)
    assert query.returncode == 0 and query.stdout.splitlines()[-1] == "2", query.stdout + query.stderr
    # a reader with another key is told so instead of answering nothing
    wrong = tally("report", "user_stats", "--data-dir", str(data_dir), "--user", EMAILS[0], "--no-chart",
                  env={**env, "TALLY_HMAC_KEY": "another-key"})
    assert wrong.returncode == 2 and "not the one the stored rows were made with" in wrong.stderr
