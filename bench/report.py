"""The results as a table for people and as JSON for later comparison."""
from __future__ import annotations

import json
from pathlib import Path

# The targets for the full pipeline on one worker (2-core machine, broker included).
TARGET_EVENTS_PER_S = 30_000
TARGET_RATIO_TO_CEILING = 0.40
TARGET_P95_MS = 5_000
FLAT_MEMORY_GROWTH = 1.25  # the run's last quarter over its first (median RSS); more is not "flat"


def targets(results: dict) -> dict[str, dict]:
    """Each target with the measured value and whether it was met."""
    tally, latency = results["tally"], results["latency"]
    memory = tally["memory"]
    growth = memory["late_median_mb"] / memory["early_median_mb"] if memory["early_median_mb"] else 0.0
    return {
        "events_per_s": {"target": f">= {TARGET_EVENTS_PER_S}", "value": tally["events_per_s"],
                         "met": tally["events_per_s"] >= TARGET_EVENTS_PER_S},
        "ratio_to_ceiling": {"target": f">= {TARGET_RATIO_TO_CEILING:.0%}", "value": tally["ratio_to_ceiling"],
                             "met": tally["ratio_to_ceiling"] >= TARGET_RATIO_TO_CEILING},
        "p95_ms": {"target": f"<= {TARGET_P95_MS}", "value": latency["p95_ms"],
                   "met": latency["p95_ms"] <= TARGET_P95_MS},
        "memory_growth": {"target": f"<= {FLAT_MEMORY_GROWTH}x", "value": round(growth, 2),
                          "met": growth <= FLAT_MEMORY_GROWTH},
    }


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def table(results: dict) -> str:
    """A fixed-width table of the four sections and the targets."""
    ceiling, naive, tally, latency = (results[k] for k in ("ceiling", "naive", "tally", "latency"))
    floor, peer = results.get("faust_floor"), results.get("batch_peer")
    memory = tally["memory"]
    rows = [
        ("stage", "events", "events/s", "CPU s / M events", "vs ceiling", "notes"),
        ("ceiling: bare aiokafka + decode", _rate(ceiling["events"]), _rate(ceiling["events_per_s"]),
         f"{ceiling['cpu_seconds_per_million']:.1f}", "100%", ""),
        *([("faust floor: take_events + decode", _rate(floor["events"]), _rate(floor["events_per_s"]),
            f"{floor['cpu_seconds_per_million']:.1f}", f"{floor['ratio_to_ceiling']:.1%}", "")] if floor else []),
        *([("batch peer: getmany + decode + insert", _rate(peer["events"]), _rate(peer["events_per_s"]),
            f"{peer['cpu_seconds_per_million']:.1f}", f"{peer['ratio_to_ceiling']:.1%}",
            "15 columns, column-oriented inserts of 20k rows, no stages")] if peer else []),
        ("naive: Faust, 1 insert per event", _rate(naive["events"]), _rate(naive["events_per_s"]),
         f"{naive['cpu_seconds_per_million']:.1f}", f"{naive['events_per_s'] / ceiling['events_per_s']:.1%}", ""),
        ("tally: full pipeline, 1 worker", _rate(tally["events"]), _rate(tally["events_per_s"]),
         f"{tally['cpu_seconds_per_million']:.1f}", f"{tally['ratio_to_ceiling']:.1%}",
         f"RSS {memory['start_mb']:.0f}/{memory['middle_mb']:.0f}/{memory['end_mb']:.0f} MB "
         f"(warm/mid/end), peak {memory['peak_mb']:.0f}, median {memory['early_median_mb']:.0f} -> "
         f"{memory['late_median_mb']:.0f} (first -> last quarter); {tally['inserts']} inserts"
         + (f"; {tally['ratio_to_faust_floor']:.0%} of the Faust floor" if floor else "")),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 5) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    sent_as = ("single messages" if results["plan"].get("envelope", 1) <= 1
               else "envelopes, each 10 ms tick's events per partition, as the SDK sends")
    lines.append(f"latency, produce -> queryable in ClickHouse, {sent_as}, at {latency['offered_rate']:,.0f} events/s offered "
                 f"({latency['achieved_rate']:,} achieved) for {latency['seconds']:.0f} s, {latency['seen']:,} events: "
                 f"p50 {latency['p50_ms']:,} ms, p95 {latency['p95_ms']:,} ms, p99 {latency['p99_ms']:,} ms, "
                 f"max {latency['max_ms']:,} ms")
    spent = tally.get("time_split_us_per_event")
    if spent:
        lines.append(f"where the worker's time goes, per event past the warm-up: the stages {spent['stage_cpu_us']:.1f} us "
                     f"CPU ({spent['stage_wall_us']:.1f} us wall) on the event loop's thread; the inserts "
                     f"{spent['insert_cpu_us']:.1f} us CPU in their thread ({spent['insert_wall_us']:.1f} us wall); chDB's "
                     f"own threads (merges, query pipelines) {spent.get('engine_cpu_us', 0.0):.1f} us CPU; the rest of the "
                     f"process's CPU {spent['other_cpu_us']:.1f} us (Faust, aiokafka, topic and changelog sends)")
    split = results.get("memory_split")
    if split:
        stages, stored = split["stages"], split["clickhouse"]
        lines.append(f"memory, the same batches without Kafka in a fresh process (warm/mid/end): stages alone "
                     f"{stages['start_mb']:.0f}/{stages['middle_mb']:.0f}/{stages['end_mb']:.0f} MB; stages and "
                     f"embedded ClickHouse inserts {stored['start_mb']:.0f}/{stored['middle_mb']:.0f}/{stored['end_mb']:.0f} MB")
    lines.append("")
    for name, target in results["targets"].items():
        lines.append(f"{'met ' if target['met'] else 'MISS'}  {name}: {target['value']} (target {target['target']})")
    machine = results["machine"]
    lines.append("")
    lines.append(f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gb']} GB, "
                 f"Python {machine['python']}; broker on the same machine")
    return "\n".join(lines)


def write_json(results: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
