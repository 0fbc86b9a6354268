"""A candidate for the next step of speed, measured, not used: decoding envelopes natively.

`python -m bench.native_decode --output FILE` compiles `bench/native_decode.c` (needs a C compiler
and Python's headers), checks on every generated envelope that it gives the same columns and
properties as upb's decode and `validate.read_fields`, and times both, best of three: the upb path
as the stages run it today (decode the envelope, read the fields, copy the properties maps) against
one native call that leaves the columns. Anything the decoder finds unusual it hands back as None
(the pipeline would then decode with upb, so no verdict changes).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import operator
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from bench.stages import positive, write_result

SOURCE = Path(__file__).with_name("native_decode.c")


def build(directory: Path):
    """The compiled decoder as a module, or an exception saying why not."""
    target = directory / f"native_decode{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", "-o", str(target),
                    str(SOURCE)], check=True, capture_output=True, text=True)
    spec = importlib.util.spec_from_file_location("native_decode", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scalar_fields() -> list[str]:
    """The decoder's columns, in field-number order: every UserAction field but the properties map."""
    from streams.contract import UserAction
    return [field.name for field in sorted(UserAction.DESCRIPTOR.fields, key=operator.attrgetter("number"))
            if field.name != "properties"]


def differences(native, envelopes: list[bytes]) -> list[str]:
    """Where the decoder disagrees with upb on some envelopes (nothing, when it is right)."""
    from streams.stages import validate
    found, names, limits = [], scalar_fields(), validate.Limits()
    for index, envelope in enumerate(envelopes):
        decoded = native.decode_batch(envelope)
        actions = validate.unpack_envelope(envelope, limits)
        if decoded is None:
            found.append(f"envelope {index}: handed back")
            continue
        columns, properties, _ = decoded
        for name, column in zip(names, columns):
            if [getattr(action, name) for action in actions] != column:
                found.append(f"envelope {index}: {name}")
        if [dict(action.properties) for action in actions] != properties:
            found.append(f"envelope {index}: properties")
    return found


def time_both(native, envelopes: list[bytes], repeats: int) -> dict[str, float]:
    from streams.stages import validate
    limits, properties_of = validate.Limits(), operator.attrgetter("properties")
    events = sum(len(native.decode_batch(envelope)[2]) for envelope in envelopes)

    def upb():
        for envelope in envelopes:
            actions = validate.unpack_envelope(envelope, limits)
            validate.read_fields(actions)
            [{key: found[key] for key in found} if found else {} for found in map(properties_of, actions)]

    def native_call():
        for envelope in envelopes:
            native.decode_batch(envelope)

    best = {}
    for name, run in (("upb_us_per_event", upb), ("native_us_per_event", native_call)) * repeats:
        started = time.thread_time()
        run()
        best[name] = min(best.get(name, float("inf")), (time.thread_time() - started) / events * 1e6)
    return {name: round(value, 3) for name, value in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.native_decode", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=positive, default=200_000)
    parser.add_argument("--envelope", type=positive, default=125)
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--output", help="JSON file to write (default: print only)")
    args = parser.parse_args(argv)
    from bench import load
    with tempfile.TemporaryDirectory(prefix="tally-native-") as directory:
        try:
            native = build(Path(directory))
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"error: cannot compile {SOURCE.name}: {getattr(exc, 'stderr', '') or exc}", file=sys.stderr)
            return 2
    envelopes = [value for _, value, _ in load.envelopes(load.generate(args.events).messages, 1, args.envelope)]
    disagreements = differences(native, envelopes)
    result = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "events": args.events,
              "envelope": args.envelope, "disagreements": disagreements[:20], **time_both(native, envelopes, args.repeats)}
    return write_result(result, args.output) or (1 if disagreements else 0)


if __name__ == "__main__":
    sys.exit(main())
