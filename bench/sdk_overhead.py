"""SDK overhead on the host's hot path, and producer throughput, each beside its baseline.

    python -m bench.sdk_overhead                     # starts a throwaway broker on free ports
    python -m bench.sdk_overhead --bootstrap 127.0.0.1:19092 --calls 50000 --events 100000 --json

Per-call cost is timed call by call (perf_counter_ns) for a bare function, the same function under
`@action_logging`, and a `track()` call, with the broker down (nothing listening) and up. Overhead
is the tracked median minus the bare median. Throughput compares the tracker (track N, flush) with
a bare aiokafka producer sending the same N pre-serialised events with the same acks.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from streams.ops.broker import free_port
from streams.contract import UserAction, new_event_id
from streams.producer.arguments import AUTO
from streams.producer.tracker import Tracker

TARGET_OVERHEAD_US = 20.0


def _timed(call, calls: int) -> list[int]:
    """Nanoseconds per call."""
    timings = []
    clock = time.perf_counter_ns
    for i in range(calls):
        started = clock()
        call(i)
        timings.append(clock() - started)
    return timings


def _summary(timings: list[int]) -> dict:
    ordered = sorted(timings)
    return {"median_us": statistics.median(ordered) / 1000, "p99_us": ordered[int(len(ordered) * 0.99)] / 1000}


def _host_function(table_key: str, *, index: str, source: str) -> dict:
    return {"table_key": table_key, "columns": 12}


def measure_call_overhead(bootstrap: str, calls: int, buffer_size: int = 10_000, scrubber=None) -> dict:
    """Per-call cost of a bare call, the decorated call and track(), against `bootstrap`."""
    tracker = Tracker(bootstrap, app="bench", topic="bench-overhead", scrubber=scrubber, buffer_size=buffer_size,
                      user_provider=lambda: "ada.lovelace@example.com")
    decorated = tracker.action_logging(_host_function)
    key = "hive://gold.core/orders"
    try:
        for call in (lambda i: _host_function(key, index="2", source="search_results"),
                     lambda i: decorated(key, index="2", source="search_results")):
            _timed(call, min(calls, 2000))  # warm up
        bare = _timed(lambda i: _host_function(key, index="2", source="search_results"), calls)
        wrapped = _timed(lambda i: decorated(key, index="2", source="search_results"), calls)
        tracked = _timed(lambda i: tracker.track("search_table", "ada.lovelace@example.com", search_term="orders",
                                                 index=i), calls)
        stats = tracker.stats()
    finally:
        tracker.close(timeout=10)
    result = {"bare": _summary(bare), "decorated": _summary(wrapped), "track": _summary(tracked),
              "dropped": stats.dropped, "delivered_before_close": stats.delivered}
    result["decorator_overhead_us"] = result["decorated"]["median_us"] - result["bare"]["median_us"]
    result["track_overhead_us"] = result["track"]["median_us"]
    return result


def measure_tracker_throughput(bootstrap: str, events: int) -> dict:
    tracker = Tracker(bootstrap, app="bench", topic="bench-throughput", scrubber=None, buffer_size=events + 1,
                      batch_size=2000)
    tracker.track("warmup", "u@example.com")
    tracker.flush(timeout=60)
    started = time.perf_counter()
    for i in range(events):
        tracker.track("search_table", f"user{i % 500}@example.com", search_term="orders", index=i)
    enqueued = time.perf_counter() - started
    delivered_all = tracker.flush(timeout=600)
    seconds = time.perf_counter() - started
    tracker.close(timeout=10)
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds,
            "enqueue_events_per_s": events / enqueued, "all_delivered": delivered_all}


async def _bare_producer(bootstrap: str, values: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send("bench-throughput-bare", value, key=key) for key, value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def measure_bare_throughput(bootstrap: str, events: int) -> dict:
    """The same events, already serialised, through one aiokafka producer: the ceiling for the tracker."""
    values = []
    for i in range(events):
        user = f"user{i % 500}@example.com"
        action = UserAction(command="search_table", user=user, app="bench", event_id=new_event_id(),
                            start_epoch_ms=int(time.time() * 1000), properties={"search_term": "orders", "index": str(i)})
        values.append((user.encode(), action.SerializeToString()))
    asyncio.run(_bare_producer(bootstrap, values[:10]))  # warm up: topic creation, connections
    started = time.perf_counter()
    asyncio.run(_bare_producer(bootstrap, values))
    seconds = time.perf_counter() - started
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


def run(bootstrap: str | None = None, calls: int = 50_000, events: int = 100_000) -> dict:
    """All measurements; starts (and stops) a throwaway broker when no bootstrap is given."""
    broker = None
    if bootstrap is None:
        from streams.ops.broker import Broker
        broker = Broker(home=Path(tempfile.mkdtemp(prefix="tally-bench-kafka-")), port=free_port(),
                        controller_port=free_port(), partitions=4)
        broker.start()
        bootstrap = broker.bootstrap
    try:
        down = f"127.0.0.1:{free_port()}"  # nothing listens here
        return {
            "target_overhead_us": TARGET_OVERHEAD_US,
            "broker_down": measure_call_overhead(down, calls),
            "broker_up": measure_call_overhead(bootstrap, calls, buffer_size=calls * 2 + 10),
            # the source-side scrub policy runs in the sending thread; this shows what it costs the caller
            "broker_up_scrubbed": measure_call_overhead(bootstrap, calls, buffer_size=calls * 2 + 10, scrubber=AUTO),
            "throughput_tracker": measure_tracker_throughput(bootstrap, events),
            "throughput_bare_aiokafka": measure_bare_throughput(bootstrap, events),
        }
    finally:
        if broker is not None:
            broker.stop()


def format_report(result: dict) -> str:
    lines = [f"SDK overhead per call (median / p99, µs; target median overhead < {result['target_overhead_us']:.0f})"]
    for state in ("broker_down", "broker_up", "broker_up_scrubbed"):
        r = result[state]
        lines.append(f"  {state:18} bare {r['bare']['median_us']:6.2f} / {r['bare']['p99_us']:6.2f}   "
                     f"decorated {r['decorated']['median_us']:6.2f} / {r['decorated']['p99_us']:6.2f}   "
                     f"track {r['track']['median_us']:6.2f} / {r['track']['p99_us']:6.2f}   "
                     f"overhead {r['decorator_overhead_us']:.2f}   dropped {r['dropped']}")
    t, b = result["throughput_tracker"], result["throughput_bare_aiokafka"]
    lines.append(f"Throughput, {t['events']} events: tracker {t['events_per_s']:,.0f}/s "
                 f"(enqueue {t['enqueue_events_per_s']:,.0f}/s, all delivered: {t['all_delivered']})   "
                 f"bare aiokafka {b['events_per_s']:,.0f}/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="a running broker; default: start a throwaway one")
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args(argv)
    result = run(args.bootstrap, args.calls, args.events)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
