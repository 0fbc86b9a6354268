"""`tally bench` / `python -m bench`: ceiling, naive peer, Tally and latency in one run.

Starts a throwaway Kafka broker unless --bootstrap is given, pre-loads generated traffic, runs the
four measurements, prints a table and writes JSON (default bench/results/bench-<UTC time>.json).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_bench(plan, bootstrap: str, work_dir: Path, profile_dir: Path | None = None, say=print) -> dict:
    """Every measurement of `plan` against the broker at `bootstrap`; the results as one dict."""
    from . import harness, load, procstat, report

    # workers that share partitions share one pseudonym key, as in a deployment
    os.environ.setdefault("TALLY_HMAC_KEY", secrets.token_hex(32))
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}-"
    say(f"generating {plan.events:,} events ...")
    traffic = load.generate(max(plan.events, plan.naive_events))
    say(f"pre-loading them into {prefix}user-actions ...")
    topics = asyncio.run(harness.load_input(bootstrap, prefix, traffic, plan.partitions, plan.envelope))

    say("ceiling: bare aiokafka consumer + decode ...")
    ceiling = asyncio.run(harness.run_ceiling(bootstrap, topics.user_actions, plan.events, f"{prefix}ceiling",
                                              max_records=max(1, 1_000 // plan.envelope)))  # ~1k events a fetch
    say(f"    {ceiling['events_per_s']:,} events/s")

    say("tally: full pipeline, one worker ...")
    def record_with_py_spy(pid: int):
        from .profile import PySpy
        return PySpy(pid, profile_dir / f"tally-{run_id}").start()

    tally = harness.run_tally(bootstrap, prefix, plan.events, work_dir / "tally", f"{prefix}tally", plan,
                              profile=record_with_py_spy if profile_dir is not None else None)
    tally["ratio_to_ceiling"] = round(tally["events_per_s"] / ceiling["events_per_s"], 6)
    say(f"    {tally['events_per_s']:,} events/s, {tally['ratio_to_ceiling']:.1%} of the ceiling")

    say("memory: the same batches without Kafka, stages alone and with embedded ClickHouse inserts ...")
    from . import memory
    memory_split = memory.split(plan.events, plan.envelope)
    say(f"    stages {memory_split['stages']['start_mb']:.0f} -> {memory_split['stages']['end_mb']:.0f} MB, "
        f"with ClickHouse {memory_split['clickhouse']['start_mb']:.0f} -> {memory_split['clickhouse']['end_mb']:.0f} MB")

    say("faust floor: take_events + decode only, nothing stored ...")
    floor = harness.run_naive(bootstrap, topics.user_actions, plan.events, work_dir / "floor", f"{prefix}floor",
                              floor=True)
    floor["ratio_to_ceiling"] = round(floor["events_per_s"] / ceiling["events_per_s"], 6)
    tally["ratio_to_faust_floor"] = round(tally["events_per_s"] / floor["events_per_s"], 3)
    say(f"    {floor['events_per_s']:,} events/s")

    say("batch peer: aiokafka getmany + decode + column-oriented inserts of 20k rows, no stages ...")
    peer = harness.run_naive(bootstrap, topics.user_actions, plan.events, work_dir / "peer", f"{prefix}peer",
                             module="bench.batch_peer")
    peer["ratio_to_ceiling"] = round(peer["events_per_s"] / ceiling["events_per_s"], 6)
    say(f"    {peer['events_per_s']:,} events/s")

    say(f"naive peer: {plan.naive_events:,} events, one insert each ...")
    naive = harness.run_naive(bootstrap, topics.user_actions, plan.naive_events, work_dir / "naive", f"{prefix}naive")
    say(f"    {naive['events_per_s']:,} events/s")

    say(f"latency: {plan.latency_rate:,.0f} events/s for {plan.latency_seconds:.0f} s ...")
    latency = harness.run_latency(bootstrap, f"{prefix}lat-", traffic, work_dir / "latency", f"{prefix}latency", plan)
    say(f"    p95 {latency['p95_ms']:,} ms")

    results = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": procstat.machine(), "plan": dataclasses.asdict(plan),
               "ceiling": ceiling, "faust_floor": floor, "batch_peer": peer, "naive": naive, "tally": tally,
               "latency": latency, "memory_split": memory_split}
    results["targets"] = report.targets(results)
    return results


ENVELOPE_EVENTS = 2_000_000  # default throughput run with --envelope


def plan_from_args(args: argparse.Namespace):
    from .harness import RunPlan
    plan = RunPlan.quick() if args.quick else RunPlan()
    changes = {name: value for name, value in (
        ("events", args.events), ("naive_events", args.naive_events), ("latency_rate", args.latency_rate),
        ("latency_seconds", args.latency_seconds), ("batch_size", args.batch_size),
        ("envelope", args.envelope)) if value is not None}
    if (args.envelope or 1) > 1 and args.events is None and not args.quick:
        # with envelopes a 500k run lasts ~15 s, mostly the worker's working set filling:
        # 2M events (about a minute) show whether memory stays flat after that
        changes["events"] = ENVELOPE_EVENTS
    plan = dataclasses.replace(plan, **changes)
    if plan.events < 100 or plan.naive_events < 100:
        raise SystemExit("--events and --naive-events must be at least 100 (10% of a run is warm-up)")
    return plan


def _cli_dashboard(args: argparse.Namespace) -> int:
    from streams.analyst.query import QueryError

    from . import dashboard, report
    try:
        results = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   **dashboard.run(Path(args.dashboard), repeats=args.repeats)}
    except (QueryError, dashboard.NoData) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = report.write_json(results, Path(args.output) if args.output else RESULTS_DIR / f"dashboard-{stamp}.json")
    print(f"\nwrote {path}")
    return 0


def _cli_bench(args: argparse.Namespace) -> int:
    from streams.ops.broker import Broker

    if args.dashboard:
        return _cli_dashboard(args)

    from . import procstat, report
    from streams.ops.broker import free_port
    if args.profile:
        from .profile import py_spy_executable
        if py_spy_executable() is None:  # before minutes of broker, input and ceiling run
            print("error: tally bench --profile records with py-spy, which is not installed here: "
                  f"{Path(sys.executable).with_name('pip')} install py-spy", file=sys.stderr)
            return 2
    plan = plan_from_args(args)
    # a terminated run still stops its workers and broker (the finally blocks run on SystemExit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    keep = args.work_dir is not None
    work_dir = Path(args.work_dir) if keep else Path(tempfile.mkdtemp(prefix="tally-bench-"))
    broker = None
    bootstrap = args.bootstrap
    try:
        if not bootstrap:
            print("starting a Kafka broker for the run ...")
            broker = Broker(home=work_dir / "kafka", port=free_port(), controller_port=free_port()).start()
            bootstrap = broker.bootstrap
        else:  # a broker that does not answer fails the run now, not after minutes of generating input
            from streams.cli import clients_quiet
            from streams.ops.broker import create_topics
            with clients_quiet():
                asyncio.run(create_topics(bootstrap, {}))
        stamp_fields = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "machine": procstat.machine()}
        if args.collector:
            from . import collector
            results = {**stamp_fields, **collector.run(bootstrap)}
        elif args.scale:
            from . import scale
            results = {**stamp_fields, **scale.run(bootstrap, work_dir, plan)}
        elif args.backfill:
            from . import backfill
            results = {**stamp_fields, **backfill.run(bootstrap, work_dir, dataclasses.replace(
                plan, events=args.events or 1_000_000))}
        elif args.soak:
            from . import soak
            results = {**stamp_fields, **soak.run(bootstrap, work_dir, plan, args.soak, args.soak_rate,
                                                        args.soak_query_every)}
        else:
            results = run_bench(plan, bootstrap, work_dir,
                                profile_dir=Path(args.profile) if args.profile else None)
    finally:
        if broker is not None:
            broker.stop()
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    kind = ("collector" if args.collector else "scale" if args.scale else "backfill" if args.backfill
            else "soak" if args.soak else "bench")
    path = report.write_json(results, Path(args.output) if args.output else RESULTS_DIR / f"{kind}-{stamp}.json")
    if kind in ("bench", "soak"):
        print()
        print(report.table(results) if kind == "bench" else soak.table(results))
    print(f"\nwrote {path}")
    return 0


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="use this Kafka broker instead of starting one")
    parser.add_argument("--quick", action="store_true",
                        help="a small run (5k events, 5 s latency) that checks the harness works")
    parser.add_argument("--events", type=int, help="events for the ceiling and Tally throughput runs (default 500k; 2M with --envelope)")
    parser.add_argument("--naive-events", type=int, help="events for the naive peer (default 20k)")
    parser.add_argument("--latency-rate", type=float, help="events/s offered in the latency run (default 5000)")
    parser.add_argument("--latency-seconds", type=float, help="length of the latency run (default 30)")
    parser.add_argument("--batch-size", type=int, help="the worker's --batch-size (rows per insert)")
    parser.add_argument("--envelope", type=int,
                        help="actions per Kafka message in the throughput runs (UserActionBatch when > 1; default 1)")
    parser.add_argument("--output", help="JSON file to write (default bench/results/bench-<UTC time>.json)")
    parser.add_argument("--work-dir", help="keep data dirs and logs here (default: a temp dir, removed)")
    parser.add_argument("--profile", metavar="DIR",
                        help="record the Tally worker with py-spy during its throughput run; write the profile to DIR")
    parser.add_argument("--dashboard", metavar="DATA_DIR",
                        help="instead: time each dashboard page over this data dir (e.g. from `tally demo --days 30`)")
    parser.add_argument("--collector", action="store_true",
                        help="instead: tally collect's events/s and CPU with Segment batches of 100, beside a bare "
                             "HTTP+JSON server")
    parser.add_argument("--scale", action="store_true",
                        help="instead: one worker against two in one consumer group over the same input")
    parser.add_argument("--backfill", action="store_true",
                        help="instead: 60 days of history (--events, default 1M) as a JSON-lines file through "
                             "`tally publish` with a worker running, timed to its report")
    parser.add_argument("--soak", type=float, metavar="MINUTES",
                        help="instead: one worker for MINUTES at half its measured capacity, fed by the SDK, with "
                             "an analyst query every few seconds; RSS, lag and p95 latency per quarter")
    parser.add_argument("--soak-rate", type=float, help="with --soak: events/s offered (default: half the capacity)")
    parser.add_argument("--soak-query-every", type=float, default=5.0, metavar="SECONDS",
                        help="with --soak: the analyst query's interval (default 5; 0: no query)")
    parser.add_argument("--repeats", type=int, default=5, help="with --dashboard: requests per page (default 5)")
    parser.set_defaults(func=_cli_bench)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmark: ceiling, naive peer, Tally throughput and latency",
                                   description=__doc__.splitlines()[0])
    _add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
