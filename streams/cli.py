"""`tally` command line: parses arguments and calls into the rest.

Each command module owns its sub-commands through `add_cli(subparsers)`, so this file
stays a table of contents.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = [
    "streams.ops.broker",     # tally broker start|stop|status
    "streams.runtime.worker",     # tally worker, tally migrate
    "streams.ops.demo",       # tally demo
    "streams.ops.backfill",   # tally publish
    "streams.producer.generator",  # tally generate
    "streams.ops.dlq",        # tally dlq inspect|replay
    "streams.analyst.query",    # tally query, tally report
    "streams.ops.metrics",  # tally metrics
    "bench.__main__",     # tally bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not name.startswith(exc.name or "?"):
                raise
            continue  # a command module not written yet
        module.add_cli(subparsers)
    return parser


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by commands that talk to Kafka or ClickHouse."""
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (env TALLY_BOOTSTRAP)")
    parser.add_argument("--data-dir", help="local state: broker, chDB, Faust tables (env TALLY_DATA_DIR)")
    parser.add_argument("--clickhouse", help="http://host:8123/db; default embedded chDB (env TALLY_CLICKHOUSE)")
    parser.add_argument("--topic-prefix", help="prefix for every topic name (env TALLY_TOPIC_PREFIX)")


def settings_from_args(args: argparse.Namespace, **extra):
    from streams.config import from_env
    return from_env(bootstrap=getattr(args, "bootstrap", None), data_dir=getattr(args, "data_dir", None),
                    clickhouse=getattr(args, "clickhouse", None), topic_prefix=getattr(args, "topic_prefix", None),
                    **extra)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "worker" and args.log_level.upper() == "WARNING":
        # a command reports a broker it cannot reach in one line of its own; the client's
        # connection errors and retries would only repeat it (the worker keeps them in its log)
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
