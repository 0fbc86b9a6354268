"""The stages alone: CPU per event of `flow.process_batch` on generated envelopes, no Kafka, no store,
and where it goes, stage by stage.

`python -m bench.stages --output FILE` (or `python bench/stages.py`, which runs whichever `streams`
is first on PYTHONPATH: an older checkout's, for a comparison in one session) generates the
events, packs them in envelopes of 125 as the SDK does, scrubs the users' profiles for the join, sets
the worker's GC thresholds, and takes `--per` envelopes a batch through the stages, best of
`--repeats` runs. The split wraps each stage function with a CPU clock: a run with it is a little
slower, so the total comes from the runs without it.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import functools
import gc
import inspect
import json
import sys
import time
from pathlib import Path

# (module, function) of the stages, outermost first; a name a version lacks is left out
STAGE_FUNCTIONS = (("flow", "admit"), ("validate", "read_fields"), ("flow", "admit_clean"),
                   ("enrich", "build_columns"), ("enrich", "extract_columns"), ("enrich", "join_profiles"),
                   ("enrich", "assign_sessions"), ("flow", "count_activity"), ("flow", "unpack"))


def prepare(events: int, envelope: int):
    from bench import load
    from streams.contract import UserProfile
    from streams.stages.scrub import Scrubber, load_policy

    traffic = load.generate(events)
    messages = [value for _, value, _ in load.envelopes(traffic.messages, 1, envelope)]
    scrubber, profiles = Scrubber(load_policy(hmac_key="bench")), {}
    for raw in (value for _, value in traffic.profiles):
        profile = UserProfile.FromString(raw)
        scrubber.scrub_profile(profile)
        profiles[profile.user] = {"email": profile.email, "title": profile.title, "team": profile.team,
                                  "ab_flags": dict(profile.ab_flags)}
    return messages, profiles


def run_once(messages: list[bytes], profiles: dict, per: int) -> tuple[float, int]:
    """CPU seconds and events of one pass over the messages, `per` envelopes a batch."""
    from streams.contract import ENVELOPE_HEADER
    from streams.stages.active_users import PartitionActivity
    from streams.stages.enrich import load_mapping
    from streams.stages import flow
    from streams.stages.flow import PartitionState, Stages, process_batch, unpack
    from streams.stages.outcome import Source
    from streams.stages.scrub import Scrubber, load_policy
    from streams.stages.validate import Limits

    # what the worker unpacks with; an older checkout's `unpack` has no columns and counts each action
    columns = {"as_columns": True} if "as_columns" in inspect.signature(unpack).parameters else {}
    events_of = getattr(flow, "events_of", len)
    stages = Stages(Limits(), load_mapping(), Scrubber(load_policy(hmac_key="bench")), 1)
    state = PartitionState(PartitionActivity(lateness_days=3))
    now_ms, done = int(time.time() * 1000), 0
    started = time.thread_time()
    for first in range(0, len(messages), per):
        items = []
        for offset, value in enumerate(messages[first:first + per], start=first):
            items.extend(unpack(value, [ENVELOPE_HEADER], Source("bench", 0, offset, len(value)), stages, now_ms,
                                **columns)[0])
        process_batch(items, state, stages, profiles, now_ms)
        state.activity.take_changed_buckets()  # what the worker persists when it cuts a batch
        done += events_of(items)
    return time.thread_time() - started, done


def split(messages: list[bytes], profiles: dict, per: int) -> dict[str, float]:
    """µs of CPU per event in each stage function (a nested one is inside its caller's figure too)."""
    from streams.stages import enrich, flow, validate
    from streams.stages.scrub import Scrubber

    spent: collections.Counter = collections.Counter()

    def timed(function, name):
        @functools.wraps(function)  # its signature too, which run_once reads
        def wrapper(*args, **kwargs):
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.thread_time() - started
        return wrapper

    modules = {"flow": flow, "enrich": enrich, "validate": validate}
    originals = []
    for module_name, name in STAGE_FUNCTIONS:
        module = modules[module_name]
        if hasattr(module, name):
            originals.append((module, name, getattr(module, name)))
            setattr(module, name, timed(getattr(module, name), name))
    originals.append((Scrubber, "scrub_columns", Scrubber.scrub_columns))
    Scrubber.scrub_columns = timed(Scrubber.scrub_columns, "scrub_columns")
    try:
        _, events = run_once(messages, profiles, per)
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    return {name: round(seconds / events * 1e6, 2) for name, seconds in spent.most_common()}


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def write_result(result: dict, output: str | None) -> int:
    """Print the result (one JSON line) and write it to `output`; a file that can't be written is one
    line on stderr, exit 2 (the result is on stdout still)."""
    from bench.report import write_json
    print(json.dumps(result))
    if output:
        try:
            write_json(result, Path(output))
        except OSError as exc:
            print(f"error: cannot write {output}: {exc.strerror}", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=positive, default=200_000)
    parser.add_argument("--envelope", type=positive, default=125)
    parser.add_argument("--per", type=positive, default=40, help="envelopes per batch (default 40)")
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--output", help="JSON file to write (default: print only)")
    args = parser.parse_args(argv)
    messages, profiles = prepare(args.events, args.envelope)
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)  # as the worker sets them (streams/runtime/worker.py)
    try:
        runs = [run_once(messages, profiles, args.per) for _ in range(args.repeats)]
        stage_split = split(messages, profiles, args.per)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    result = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "events": runs[0][1], "envelope": args.envelope, "envelopes_per_batch": args.per,
              "us_per_event": [round(seconds / events * 1e6, 2) for seconds, events in runs],
              "split_us_per_event": stage_split}
    result["best_us_per_event"] = min(result["us_per_event"])
    return write_result(result, args.output)


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # `bench` itself, after PYTHONPATH's `streams`
    sys.exit(main())
