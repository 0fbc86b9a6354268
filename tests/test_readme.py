"""The README's "After the demo" walk, run as a newcomer types it: its own broker, a worker in the
background, every command in order, in a fresh directory. Each must succeed, say no error, and
show what the README says it shows."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from streams.ops.broker import free_ports

pytestmark = pytest.mark.kafka


def walk_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## After the demo", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def wait_until_taking(web: str, worker: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the worker answers and owns the input partitions (a person waits for its first output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker exited"
        try:
            with urllib.request.urlopen(web + "/stats/", timeout=2) as response:
                if len(json.loads(response.read())["consumer_lag"]) == 4:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the worker did not take its partitions")


def test_the_readme_walk_after_the_demo(tmp_path):
    port, web_port = free_ports(2), free_port()  # the broker's port, and its controller's at the next
    env = {name: value for name, value in os.environ.items() if not name.startswith("TALLY_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", TALLY_BOOTSTRAP=f"127.0.0.1:{port}",
               TALLY_WEB_PORT=str(web_port))
    said: dict[str, str] = {}
    worker = None
    try:
        for command in walk_commands():
            if command.endswith("&"):
                worker = subprocess.Popen(command[:-1].split(), cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                wait_until_taking(f"http://127.0.0.1:{web_port}", worker)
                continue
            if command.startswith("kill %1"):
                worker.terminate()
                assert worker.wait(60) == 0, worker.stdout.read()[-2000:]
                assert "Traceback" not in worker.stdout.read()
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            assert "Traceback" not in done.stderr and "error:" not in done.stderr, f"{command}\n{done.stderr}"
            said[command.split()[1]] = done.stdout
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        subprocess.run([sys.executable, "-m", "streams.cli", "broker", "stop"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=120)

    generated = int(re.search(r"wrote (\d+) events", said["generate"] + said.get("generate", "")).group(1))
    assert f"taken by the worker: stored {generated}, duplicates 0, dead-lettered 0" in said["publish"]
    rows = [line.split() for line in said["query"].splitlines()[2:-1]]
    assert sum(int(events) for _, events, _ in rows) == generated
    assert said["report"].splitlines()[0].split() == ["ds", "active_users"]
    assert said["metrics"].startswith("active users on ")
    assert said["broker"].strip() == "stopped"
