"""Every expected failure of a command is one line on stderr, with what to do, and exit code 2:
each sub-command against each fault a user meets by the book (no broker, no ClickHouse, a
mistyped data dir, file, SQL, report or flag, an output pipe closed early)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOWN = "127.0.0.1:1"  # nothing listens there: refused at once
NO_SERVER = "http://127.0.0.1:1/db"


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    base = tmp_path_factory.mktemp("commands")
    store = base / "store"
    assert run("migrate", "--data-dir", str(store)).returncode == 0
    good = base / "good.jsonl"
    good.write_text(json.dumps({"command": "ping", "user": "ada@example.com", "app": "shell"}) + "\n")
    return {"STORE": str(store), "MISSING": str(base / "does-not-exist"), "GOOD": str(good),
            "NOFILE": str(base / "missing.jsonl"), "EMPTY": str(base / "empty")}


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TALLY_") or name == "TALLY_HMAC_KEY"}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env, input=stdin)


CASES = [
    # broker down
    (["dlq", "inspect", "--bootstrap", DOWN], "cannot reach Kafka at 127.0.0.1:1: start it"),
    (["dlq", "replay", "--reason", "invalid_field", "--bootstrap", DOWN], "cannot reach Kafka"),
    (["metrics", "--bootstrap", DOWN, "--data-dir", "EMPTY"], "cannot read the active users from Kafka"),
    (["publish", "GOOD", "--bootstrap", DOWN], "cannot publish to Kafka at 127.0.0.1:1"),
    (["generate", "--days", "1", "--users", "2", "--events-per-day", "5", "--bootstrap", DOWN], "cannot reach Kafka"),
    (["worker", "--session-timeout", "2", "--data-dir", "EMPTY"], "--session-timeout 2 is under the 6 s"),
    (["worker", "--bootstrap", DOWN, "--data-dir", "EMPTY"], "cannot reach Kafka at 127.0.0.1:1: start it"),
    (["bench", "--scale", "--bootstrap", DOWN], "cannot reach Kafka at 127.0.0.1:1: start it"),  # before generating
    # ClickHouse unreachable
    (["migrate", "--clickhouse", NO_SERVER], "cannot reach ClickHouse at http://127.0.0.1:1/db"),
    (["query", "SELECT 1", "--clickhouse", NO_SERVER], "cannot open ClickHouse at http://127.0.0.1:1/db"),
    (["report", "dau", "--clickhouse", NO_SERVER], "cannot open ClickHouse"),
    (["ui", "--clickhouse", NO_SERVER], "cannot open ClickHouse at http://127.0.0.1:1/db"),
    # a data dir that is a file
    (["worker", "--data-dir", "GOOD", "--bootstrap", DOWN], "a file is there, where a directory is needed"),
    (["demo", "--data-dir", "GOOD"], "a file is there, where a directory is needed"),
    # a data dir that does not exist
    (["query", "SELECT 1", "--data-dir", "MISSING"], "no Tally data in"),
    (["report", "dau", "--data-dir", "MISSING"], "no Tally data in"),
    (["ui", "--data-dir", "MISSING"], "no Tally data in"),
    # the dashboard bound beyond this machine without a token
    (["ui", "--host", "0.0.0.0", "--data-dir", "STORE"], "set TALLY_UI_TOKEN"),
    # a file that does not exist
    (["publish", "NOFILE"], "cannot read"),
    (["collect", "--keys", "NOFILE"], "cannot read the collector's keys file"),
    (["collect", "--keys", "GOOD"], "needs `keys:` mapping each write key or api key to an app name"),
    (["collect"], "the collector needs its keys file"),
    # bad SQL, unknown report, unknown flag
    (["query", "SELEC app FROM user_actions", "--data-dir", "STORE"], "'SELEC' is not a keyword of a query; did you mean SELECT?"),
    (["query", "SELECT nosuch FROM user_actions", "--data-dir", "STORE"], "nosuch"),
    (["query", "SELECT 1; DROP TABLE user_actions", "--data-dir", "STORE"], "one statement at a time"),
    (["query", "SELECT app FROM user_actions WHERE", "--data-dir", "STORE"],
     "error: Syntax error: the SQL ends too early (after 'SELECT app FROM user_actions WHERE')"),
    (["report", "nosuch", "--data-dir", "STORE"], "unknown report 'nosuch'"),
    (["query", "--nosuch", "SELECT 1"], "tally query: error: unrecognized arguments: --nosuch"),
    (["dlq", "inspect", "--nosuch"], "tally dlq inspect: error: unrecognized arguments: --nosuch"),
    (["ui", "--nosuch"], "tally ui: error: unrecognized arguments: --nosuch"),
]


@pytest.mark.parametrize("args, says", CASES, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_an_expected_failure_is_one_line_and_exit_2(places, args, says):
    done = run(*[places.get(arg, arg) for arg in args])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert says in last, done.stderr
    assert "readonly" not in last and "Native" not in last  # nothing the user did not type
    if not last.startswith("tally "):  # argparse's own errors come after the sub-command's usage
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert last.startswith("error: ") or last.startswith("cannot read")


@pytest.mark.skipif(bool(shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()),
                    reason="py-spy is installed: the run would start")
def test_a_profiled_bench_without_py_spy_says_how_to_install_it_before_it_starts(tmp_path):
    done = run("bench", "--profile", str(tmp_path / "profile"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "install py-spy" in done.stderr
    assert "starting a Kafka broker" not in done.stdout


def test_output_closed_early_is_not_an_error(places):
    done = subprocess.run(f"{sys.executable} -m streams.cli query 'SELECT number FROM numbers(200000)' "
                          f"--data-dir {places['STORE']} | head -2; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == ["number", "------"]


def test_the_demo_never_removes_a_data_dir_that_is_not_a_demos(places):
    """The demo starts by removing its data dir: pointed at a worker's store by mistake, it refuses."""
    done = run("demo", "--data-dir", places["STORE"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {places['STORE']} holds data that is not a demo's, and the demo starts by removing its data dir: "
        f"give the demo a --data-dir of its own"]
    assert run("query", "SELECT count() FROM user_actions", "--data-dir", places["STORE"]).returncode == 0
