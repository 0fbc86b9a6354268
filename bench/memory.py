"""Where the worker's memory goes: the benchmark's batches through the stages in a fresh process,
without Kafka, once with nothing stored and once inserted into an embedded ClickHouse.

The worker's resident memory is the pipeline's state plus, with the embedded default, the
ClickHouse engine in the same process. Run side by side, the two modes tell those apart.
`python -m bench.memory --mode stages|clickhouse --events N --envelope E` prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streams.config import Settings

from .measure import WARM_UP_FRACTION

MODES = ("stages", "clickhouse")


def rss_mb() -> float:
    from .procstat import sample
    return sample(os.getpid()).rss_mb


def measure(mode: str, events: int, envelope: int, data_dir: Path, batch_rows: int = 20_000,
            step_bytes: int = Settings.step_bytes) -> dict:
    """Run `events` generated events through the stages as the worker steps through them; at every
    `batch_rows` rows the batch is cut (and, in "clickhouse" mode, inserted into a chDB in `data_dir`).
    Resident memory after each cut, from the first one past the warm-up."""
    from streams.stages.active_users import PartitionActivity
    from streams.runtime.batching import PendingBatch, steps_by_size
    from streams.contract import ENVELOPE_HEADER
    from streams.stages.enrich import load_mapping
    from streams.stages.outcome import Source
    from streams.stages.flow import PartitionState, Stages, process_batch, unpack
    from streams.stages.scrub import Scrubber, load_policy
    from streams.store.sink import USER_ACTION_COLUMNS, ClickHouseWriter
    from streams.stages.validate import Limits

    from . import load
    traffic = load.generate(events)
    if envelope > 1:
        messages = [(value, [ENVELOPE_HEADER]) for _, value, _ in load.envelopes(traffic.messages, 1, envelope)]
    else:
        messages = [(value, None) for _, value in traffic.messages]
    del traffic
    writer = None
    if mode == "clickhouse":
        from streams.store.clickhouse import connect_and_migrate
        from streams.store.sink import RetryPolicy
        writer = ClickHouseWriter(connect_and_migrate(f"chdb://{data_dir}", RetryPolicy(max_attempts=1)))
    stages = Stages(Limits(), load_mapping(), Scrubber(load_policy(hmac_key=os.environ.get("TALLY_HMAC_KEY", "bench"))), 1)
    state = PartitionState(PartitionActivity(lateness_days=3))
    pending, done, looks = PendingBatch(), 0, []
    steps = steps_by_size(list(enumerate(messages)), step_bytes, size_of=lambda message: len(message[1][0]))
    for number, step in enumerate(steps, start=1):
        items = []
        for offset, (value, headers) in step:
            unpacked, _ = unpack(value, headers, Source("bench", 0, offset, len(value)), stages, int(time.time() * 1000))
            items.extend(unpacked)
        pending.add_rows(process_batch(items, state, stages, {}).columns)
        done += len(items)
        if pending.row_count >= batch_rows or number == len(steps):
            state.activity.take_changed_buckets()  # what the worker persists when it cuts a batch
            if writer is not None:
                writer.insert_columns("user_actions", pending.columns, USER_ACTION_COLUMNS, f"memory-{number}")
            pending = PendingBatch()
            if done >= events * WARM_UP_FRACTION:
                looks.append(round(rss_mb(), 1))
    return {"mode": mode, "events": done, "start_mb": looks[0], "middle_mb": looks[len(looks) // 2],
            "end_mb": looks[-1], "peak_mb": max(looks), "batches": len(looks)}


def _spawn(mode: str, events: int, envelope: int) -> dict:
    output = subprocess.run([sys.executable, "-m", "bench.memory", "--mode", mode, "--events", str(events),
                             "--envelope", str(envelope)], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    return json.loads(output.stdout.strip().splitlines()[-1])


def split(events: int, envelope: int) -> dict:
    """Both modes, each in a fresh process."""
    return {mode: _spawn(mode, events, envelope) for mode in MODES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--envelope", type=int, default=1)
    args = parser.parse_args(argv)
    from streams.store.clickhouse import close_all
    with tempfile.TemporaryDirectory(prefix="tally-memory-") as data_dir:
        try:
            print(json.dumps(measure(args.mode, args.events, args.envelope, Path(data_dir))))
        finally:
            close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
