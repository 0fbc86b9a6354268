"""Pure arithmetic over what the harness observed: throughput windows, latencies, percentiles."""
from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass

WARM_UP_FRACTION = 0.1  # the first 10% of a run (startup, rebalance, cold caches) is not measured


@dataclass(frozen=True)
class Progress:
    """One look at a running consumer."""
    at_s: float          # monotonic clock of the harness
    done: int            # events finished (Tally: consumed; its last look also waits for the stored rows)
    cpu_seconds: float   # the consumer process's user + system time so far
    rss_mb: float
    worker_clock: dict | None = None  # Tally: time counters so far (its own, `worker_clock`; its engine threads' CPU)


@dataclass(frozen=True)
class Window:
    events: int
    seconds: float
    cpu_seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_seconds_per_million(self) -> float:
        return self.cpu_seconds / self.events * 1_000_000 if self.events else 0.0


def measured_window(samples: list[Progress], total: int, warm_up: float = WARM_UP_FRACTION) -> Window:
    """From the first look past the warm-up to the first look with everything done."""
    first, last = _window_looks(samples, total, warm_up)
    return Window(last.done - first.done, last.at_s - first.at_s, last.cpu_seconds - first.cpu_seconds)


def _window_looks(samples: list[Progress], total: int, warm_up: float) -> tuple[Progress, Progress]:
    """The first look past the warm-up and the first with everything done. A run so short that one
    look saw both starts from the look before it instead."""
    start = next((i for i, s in enumerate(samples) if s.done >= total * warm_up), None)
    end = next((i for i, s in enumerate(samples) if s.done >= total), None)
    if start is not None and start == end:
        start -= 1
    if start is None or end is None or start < 0 or samples[end].at_s <= samples[start].at_s:
        raise ValueError(f"run did not finish past its warm-up: {len(samples)} samples, {total} events")
    return samples[start], samples[end]


def worker_clock(stats: dict) -> dict:
    """A Tally worker's own time counters from its /stats/: the stages' CPU and wall seconds (event
    loop thread) and the inserts' (their thread)."""
    stages, sink = stats["stages"], stats["sink"]
    return {"stage_cpu": stages["cpu_seconds"], "stage_wall": stages["seconds"],
            "insert_cpu": sink["insert_cpu_seconds"], "insert_wall": sink["insert_seconds"]}


def time_split(samples: list[Progress], total: int, warm_up: float = WARM_UP_FRACTION) -> dict:
    """Microseconds per event over the measured window: the stages (CPU, wall), the inserts (CPU of
    their thread, wall), chDB's own threads (CPU, when sampled as `engine_cpu`), and the rest of the
    process's CPU (Faust, aiokafka, sends)."""
    first, last = _window_looks(samples, total, warm_up)
    events = last.done - first.done
    if not events or first.worker_clock is None or last.worker_clock is None:
        return {}
    spent = {name: last.worker_clock[name] - first.worker_clock[name] for name in first.worker_clock}
    split = {f"{name}_us": round(seconds / events * 1e6, 2) for name, seconds in spent.items()}
    cpu = spent["stage_cpu"] + spent["insert_cpu"] + spent.get("engine_cpu", 0.0)
    split["other_cpu_us"] = round((last.cpu_seconds - first.cpu_seconds - cpu) / events * 1e6, 2)
    return split


def memory_profile(samples: list[Progress], total: int, warm_up: float = WARM_UP_FRACTION) -> dict:
    """Resident memory once warm, at the middle, at the end, and the peak; and the medians of the
    looks in the first and last quarter of the measured window. A single look can land inside an
    embedded merge (hundreds of MB for a few seconds), so growth is judged on the medians: a leak
    moves them, a passing merge does not."""
    warm = [s for s in samples if s.done >= total * warm_up] or samples
    middle = next((s for s in warm if s.done >= total / 2), warm[-1])
    first, last = warm[0].done, warm[-1].done
    quarter = (last - first) / 4
    early = [s.rss_mb for s in warm if s.done <= first + quarter] or [warm[0].rss_mb]
    late = [s.rss_mb for s in warm if s.done >= last - quarter] or [warm[-1].rss_mb]
    return {"start_mb": round(warm[0].rss_mb, 1), "middle_mb": round(middle.rss_mb, 1),
            "end_mb": round(warm[-1].rss_mb, 1), "peak_mb": round(max(s.rss_mb for s in samples), 1),
            "early_median_mb": round(statistics.median(early), 1), "late_median_mb": round(statistics.median(late), 1)}


def visible_after(sent: list[tuple[int, int, float]], polls: list[tuple[float, dict[int, int]]]) -> list[float | None]:
    """Seconds from each send (partition, offset, sent_s) to the first poll that saw its offset stored.

    A poll (time, {partition: highest stored offset}) makes visible every offset up to that one, since a
    worker inserts a partition's batches in offset order. None for an event no poll saw."""
    latencies: list[float | None] = []
    seen_at: dict[int, tuple[list[int], list[float]]] = {}
    for partition in {p for p, _, _ in sent}:
        highs, times, best = [], [], -1
        for at_s, high_by_partition in sorted(polls, key=lambda poll: poll[0]):
            high = high_by_partition.get(partition, -1)
            if high > best:  # keep only polls that moved the partition forward
                best = high
                highs.append(high)
                times.append(at_s)
        seen_at[partition] = (highs, times)
    for partition, offset, sent_s in sent:
        highs, times = seen_at[partition]
        index = bisect.bisect_left(highs, offset)
        latencies.append(times[index] - sent_s if index < len(highs) else None)
    return latencies


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
