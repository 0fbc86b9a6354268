"""The main job, `tally demo`, as a user runs it (here against the session's broker, small traffic)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_in_terminal(argv: list[str], env: dict, until: str, timeout: float = 600.0) -> tuple[subprocess.Popen, str]:
    """Start `argv` on a pseudo-terminal, as a person runs it, and read its output until `until` appears."""
    import pty
    import select
    main_fd, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env=env,
                               close_fds=True)
    os.close(terminal)
    out, deadline = b"", time.monotonic() + timeout
    while until.encode() not in out:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(out.decode(errors="replace")[-3000:])
        if select.select([main_fd], [], [], 1.0)[0]:
            try:
                out += os.read(main_fd, 65536)
            except OSError:  # the terminal closed: the process ended
                pass
    process.main_fd = main_fd
    return process, out.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.kafka
def test_demo_runs_end_to_end_and_its_live_counts_match_clickhouse(bootstrap, tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "TALLY_HMAC_KEY"}  # as a newcomer runs it
    demo, out = run_in_terminal(
        [sys.executable, "-m", "streams.cli", "demo", "--bootstrap", bootstrap, "--data-dir", str(tmp_path / "demo"),
         "--days", "3", "--users", "40", "--events-per-day", "400"], env, until="Ctrl-C to stop)")
    try:  # in a terminal it ends by serving the dashboard over its data until Ctrl-C
        address = re.search(r"the demo's dashboard: (http://127\.0\.0\.1:\d+/)", out)
        assert address, out[-3000:]
        with urllib.request.urlopen(address.group(1) + "api/page?page=overview", timeout=60) as answer:
            overview = json.loads(answer.read())
        assert overview["tiles"] and overview["tiles"][0]["value"] > 0
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        demo.kill()
        os.close(demo.main_fd)
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


def test_out_of_a_terminal_the_demo_says_how_to_open_the_dashboard(tmp_path, capsys):
    from streams.config import Settings
    from streams.ops.demo import show_dashboard
    assert show_dashboard(Settings(data_dir=tmp_path), serve=False) == 0
    assert capsys.readouterr().out == f"the dashboard: tally ui --data-dir {tmp_path}, then open http://127.0.0.1:6080/\n"
