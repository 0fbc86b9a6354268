"""`tally worker` (the Faust worker) and `tally migrate`."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def worker_file(data_dir: Path) -> Path:
    """Written while a worker runs: how `tally query` finds the process that owns chDB."""
    return data_dir / "worker.json"


def run_worker(settings, loglevel: str = "WARNING") -> None:
    import faust

    from streams.runtime.app import create_app, internal_topics
    from streams.ops.broker import create_topics, pipeline_topics
    from streams.store import pseudonym_key

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from streams.runtime.routine_logs import say_routine_at_info
    say_routine_at_info()
    if not settings.hmac_key:
        settings = pseudonym_key.with_key(settings, create=True)
        log.info("pseudonym key: %s (TALLY_HMAC_KEY is not set); workers that share partitions "
                 "must share one key: set TALLY_HMAC_KEY", pseudonym_key.key_path(settings.data_dir))
    counts, compacted = pipeline_topics(settings)
    own, changelogs = internal_topics(settings)
    from streams.cli import clients_quiet
    with clients_quiet():  # the broker's first answer: if it cannot be reached, one line says so
        asyncio.run(create_topics(settings.bootstrap, {**counts, **own}, compacted | changelogs, settings.replication))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust needs a fresh one
    pipeline = create_app(settings)
    # Batches make many short-lived objects; the default GC thresholds rescan the long-lived state
    # (tables, caches) far too often. Freeze what exists now and collect the young generation rarely,
    # but the oldest often enough (every 10M allocations) to free the reference cycles Faust,
    # aiokafka and asyncio leave behind.
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    marker = worker_file(settings.data_dir)
    marker.write_text(json.dumps({"pid": os.getpid(), "web_port": settings.web_port,
                                  "clickhouse": settings.clickhouse_dsn if not settings.is_embedded_clickhouse else "chdb"}))
    try:
        worker = faust.Worker(pipeline.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        # The spinner sets the root logger to DEBUG and adds a DEBUG handler: every aiokafka/Faust
        # debug message would then be formatted (and scrubbed) for nothing.
        worker.spinner = None
        worker.execute_from_commandline()
    finally:
        marker.unlink(missing_ok=True)
        from streams.store import clickhouse
        clickhouse.close_all()


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser("worker", help="run the Faust worker: Kafka -> stages -> ClickHouse")
    add_settings_args(parser)
    parser.add_argument("--web-port", type=int, help="HTTP port for /stats, /metrics, /active-users, /query")
    parser.add_argument("--web-bind", help="address the HTTP port listens on (default 127.0.0.1; env TALLY_WEB_BIND)")
    parser.add_argument("--admin-sql", action="store_true", default=None,
                        help="let POST /query/ change data and tables (an operator's local worker; never on a "
                             "shared port). Without it, queries run read-only")
    parser.add_argument("--partitions", type=int, help="partitions of the input topic (default 4)")
    parser.add_argument("--replication", type=int,
                        help="replicas of the topics the worker creates: 3 on a three-node cluster (default 1; "
                             "env TALLY_REPLICATION)")
    parser.add_argument("--session-timeout", type=float,
                        help="seconds a worker may go silent before the group gives its partitions to the others: "
                             "how long a crashed worker's partitions wait (default 60; env TALLY_SESSION_TIMEOUT)")
    parser.add_argument("--batch-size", type=int, help="rows per ClickHouse insert (about; default 20000)")
    parser.add_argument("--batch-seconds", type=float, help="seconds a batch may wait to fill")
    parser.add_argument("--app-id", help="Faust app id = Kafka consumer group (default tally)")
    parser.add_argument("--lateness-days", type=int, help="allowed lateness in event-time days (default 3)")
    parser.add_argument("--alert-rules", help="YAML file of alert rules")
    parser.add_argument("--idle-seconds", type=float,
                        help="a caught-up input partition quiet this long stops holding back the alerts' clock (30)")
    parser.add_argument("--scrub-policy", help="YAML scrub policy (default: the bundled one)")
    parser.add_argument("--worker-log-level", default="WARNING")
    parser.set_defaults(func=_cli_worker)

    migrate = subparsers.add_parser("migrate", help="apply ClickHouse migrations (the worker also does at start)")
    add_settings_args(migrate)
    migrate.set_defaults(func=_cli_migrate)


def settings_for_worker(args):
    from streams.cli import settings_from_args
    return settings_from_args(
        args, web_port=args.web_port, web_bind=args.web_bind, admin_sql=args.admin_sql,
        partitions=args.partitions, replication=args.replication,
        session_timeout_s=args.session_timeout, sink_batch_size=args.batch_size,
        sink_batch_seconds=args.batch_seconds, app_id=args.app_id, allowed_lateness_days=args.lateness_days,
        idle_partition_seconds=args.idle_seconds,
        alert_rules=Path(args.alert_rules) if args.alert_rules else None,
        scrub_policy=Path(args.scrub_policy) if args.scrub_policy else None)


def _cli_worker(args) -> int:
    import sys

    from streams.store.clickhouse import StoreUnavailable
    from streams.store.pseudonym_key import KeyMismatch
    if args.session_timeout is not None and args.session_timeout < 6:  # Kafka's group.min.session.timeout.ms
        print(f"error: --session-timeout {args.session_timeout:g} is under the 6 s Kafka brokers accept by "
              f"default; give 6 or more", file=sys.stderr)
        return 2
    try:
        run_worker(settings_for_worker(args), loglevel=args.worker_log_level)
    except (KeyMismatch, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cli_migrate(args) -> int:
    from streams.store import clickhouse
    from streams.cli import settings_from_args
    settings = settings_from_args(args)
    applied = clickhouse.migrate(clickhouse.connect(settings.clickhouse_dsn))
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0
