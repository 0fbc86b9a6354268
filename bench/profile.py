"""py-spy on the Tally worker during its throughput run, and where its time goes.

py-spy writes collapsed stacks ("frame;frame;frame count" per line); `hot_functions` turns them into
the share of samples each function is on the CPU itself (self), and each of the pipeline's own
functions anywhere on the stack (own_total).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


# py-spy counts an event loop polling its sockets as running; it is the loop waiting for work
IDLE_FRAMES = ("EpollSelector.select (", "select_epoll_poll", "epoll_wait")


def frame_function(frame: str) -> str:
    """`handle_actions (streams/runtime/app.py:172)` -> `handle_actions (streams/runtime/app.py)`: lines merged per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name


def hot_functions(collapsed_lines, top: int = 20, own_code: str = "streams/") -> dict:
    """From collapsed stack lines: the share of samples per thread, per function on the CPU itself (self),
    and per function of `own_code` anywhere on the stack (total)."""
    threads: Counter = Counter()
    self_counts: Counter = Counter()
    own_totals: Counter = Counter()
    samples = idle = 0
    for line in collapsed_lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        if frames and frames[-1].startswith(IDLE_FRAMES):
            idle += n
            continue
        samples += n
        threads[thread.split(": ", 1)[-1]] += n
        functions = [frame_function(frame) for frame in frames]
        if functions:
            self_counts[functions[-1]] += n
        for function in {f for f in functions if own_code in f}:
            own_totals[function] += n

    def shares(counts: Counter) -> list[dict]:
        return [{"function": f, "share": round(c / samples, 4)} for f, c in counts.most_common(top)]

    if not samples:
        return {"samples": 0, "idle_samples": idle, "threads": {}, "self": [], "own_total": []}
    return {"samples": samples, "idle_samples": idle, "threads": {t: round(c / samples, 4) for t, c in threads.most_common()},
            "self": shares(self_counts), "own_total": shares(own_totals)}


def py_spy_executable() -> str | None:
    """py-spy on the PATH or beside this interpreter (a venv's bin), or None when not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


class PySpy:
    """`py-spy record` attached to a running process until `finish()`."""

    def __init__(self, pid: int, out_base: Path) -> None:
        self.pid, self.out_base = pid, out_base
        self.process: subprocess.Popen | None = None

    @property
    def collapsed_file(self) -> Path:
        return self.out_base.with_suffix(".collapsed.txt")

    def start(self) -> "PySpy":
        executable = py_spy_executable()
        self.out_base.parent.mkdir(parents=True, exist_ok=True)
        # --threads: the sink inserts from an executor thread; idle samples are left out
        self.process = subprocess.Popen(
            [executable, "record", "--pid", str(self.pid), "--rate", "100", "--format", "raw", "--threads",
             "--output", str(self.collapsed_file)],
            stdout=subprocess.DEVNULL, stderr=open(self.out_base.with_suffix(".log"), "wb"))
        return self

    def finish(self) -> dict:
        """Stop recording; write and return the summary (also `<out_base>.json`)."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)
        with open(self.collapsed_file) as lines:
            summary = hot_functions(lines)
        self.out_base.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
