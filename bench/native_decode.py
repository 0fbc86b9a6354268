"""Decoding envelopes, natively against upb: `python -m bench.native_decode --output FILE`.

Checks on every generated envelope that the native decoder (`streams.contract.envelope_columns`,
built from `_wire.c` at install) gives the same columns, properties and sizes as upb's decode, and
times both, best of `--repeats`: the upb path as the stages ran it before the decoder (decode the
envelope, read the fields off each action, copy the properties maps) against the one native call.
"""
from __future__ import annotations

import argparse
import datetime as dt
import operator
import sys
import time

from bench.stages import positive, write_result


def differences(envelopes: list[bytes]) -> list[str]:
    """Where the decoder disagrees with upb on some envelopes (nothing, when it is right)."""
    from streams.contract import envelope_columns
    from streams.stages import validate
    found, limits = [], validate.Limits()
    for index, envelope in enumerate(envelopes):
        decoded = envelope_columns.decode(envelope)
        actions = validate.unpack_envelope(envelope, limits)
        if decoded is None:
            found.append(f"envelope {index}: handed back")
            continue
        for name, column in decoded.fields.items():
            if [getattr(action, name) for action in actions] != column:
                found.append(f"envelope {index}: {name}")
        if [dict(action.properties) for action in actions] != decoded.properties:
            found.append(f"envelope {index}: properties")
        if [action.ByteSize() for action in actions] != decoded.sizes:
            found.append(f"envelope {index}: sizes")
    return found


def time_both(envelopes: list[bytes], repeats: int) -> dict[str, float]:
    from streams.contract import envelope_columns
    from streams.stages import validate
    limits, properties_of = validate.Limits(), operator.attrgetter("properties")
    events = sum(map(len, map(envelope_columns.decode, envelopes)))

    def upb():
        for envelope in envelopes:
            actions = validate.unpack_envelope(envelope, limits)
            validate.read_fields(actions)
            [{key: found[key] for key in found} if found else {} for found in map(properties_of, actions)]

    def native():
        for envelope in envelopes:
            envelope_columns.decode(envelope)

    best = {}
    for name, run in (("upb_us_per_event", upb), ("native_us_per_event", native)) * repeats:
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
    from streams.contract import envelope_columns
    if not envelope_columns.NATIVE:
        print("error: the native decoder is not built (no C compiler at install?): run `make install` again "
              "with gcc or cc on the PATH", file=sys.stderr)
        return 2
    envelopes = [value for _, value, _ in load.envelopes(load.generate(args.events).messages, 1, args.envelope)]
    disagreements = differences(envelopes)
    result = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "events": args.events,
              "envelope": args.envelope, "disagreements": disagreements[:20], **time_both(envelopes, args.repeats)}
    return write_result(result, args.output) or (1 if disagreements else 0)


if __name__ == "__main__":
    sys.exit(main())
