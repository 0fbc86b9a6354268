"""CPU time and resident memory of a process, read from /proc (Linux), and the machine it runs on."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float  # user + system, all threads (chDB's included)
    rss_mb: float
    engine_cpu_seconds: float = 0.0  # of the threads that named themselves: chDB's (merges, query pipelines);
                                     # Python's threads keep the process's name


def parse_cpu_seconds(stat_line: str) -> float:
    """utime + stime of a /proc/<pid>/stat line, in seconds. The command name may hold spaces: split after ')'."""
    fields = stat_line.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from the state
    return (utime + stime) / CLOCK_TICKS


def parse_rss_mb(status_text: str) -> float:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return 0.0


def sample(pid: int) -> ProcSample:
    with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/status") as status:
        return ProcSample(parse_cpu_seconds(stat.read()), parse_rss_mb(status.read()), engine_cpu_seconds(pid))


def engine_cpu_seconds(pid: int) -> float:
    """CPU seconds of the process's threads named otherwise than its main thread."""
    main_name = _read(f"/proc/{pid}/comm")
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if _read(f"/proc/{pid}/task/{tid}/comm") != main_name:
                total += parse_cpu_seconds(_read(f"/proc/{pid}/task/{tid}/stat"))
        except OSError:  # the thread ended meanwhile
            pass
    return total


def _read(path: str) -> str:
    with open(path) as file:
        return file.read().strip()


def machine() -> dict:
    """What the numbers were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    memory_gb = 0.0
    try:
        with open("/proc/meminfo") as meminfo:
            memory_gb = round(int(meminfo.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": memory_gb, "kernel": platform.release(),
            "python": sys.version.split()[0]}
