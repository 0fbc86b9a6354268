"""`tally` command line: parses arguments and calls into the rest.

Each command module owns its sub-commands through `add_cli(subparsers)`, so this file
stays a table of contents.
"""
from __future__ import annotations

import argparse
import contextlib
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
    "streams.analyst.dashboard.command",  # tally ui
    "streams.collector.command",  # tally collect
    "streams.ops.metrics",  # tally metrics
    "bench.__main__",     # tally bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING")
    subparsers = parser.add_subparsers(dest="command", required=True)
    parser.missing_extras = set()  # the optional packages commands could not load without
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing in WORKER_STACK:  # a producer-only install: the worker's commands are not here
                parser.missing_extras.add(missing)
                continue
            if not name.startswith(exc.name or "?"):
                raise
            continue  # a command module not written yet
        module.add_cli(subparsers)
    return parser


# What `pip install 'tally[worker]'` adds to the producer side (the SDK, `tally publish`, `tally generate`).
WORKER_STACK = {"faust", "mode", "clickhouse_connect", "chdb", "aiohttp", "plotly", "orjson"}


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
    parser = build_parser()
    words = argv if argv is not None else sys.argv[1:]
    named = next((w for i, w in enumerate(words) if not w.startswith("-") and (i == 0 or words[i - 1] != "--log-level")),
                 None)
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if parser.missing_extras and named and named not in choices:
        print(f"error: `tally {named}` is not installed here (it needs {', '.join(sorted(parser.missing_extras))}): "
              f"pip install 'tally[worker]'", file=sys.stderr)
        return 2
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the sub-command's own usage, not the list of every command
        command_parser(parser, argv if argv is not None else sys.argv[1:]).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "worker" and args.log_level.upper() == "WARNING":
        # a command reports a broker it cannot reach in one line of its own; the client's
        # connection errors and retries would only repeat it (the worker keeps them in its log)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_clients_quiet)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `tally ... | head`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = expected_failure(exc, args)
        if message is None or args.log_level.upper() == "DEBUG":
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


NOISY_CLIENTS = ("aiokafka", "urllib3", "clickhouse_connect")


def _clients_quiet(record: logging.LogRecord) -> bool:
    """Drop the Kafka and HTTP clients' own retry and connection messages (below CRITICAL)."""
    return record.levelno >= logging.CRITICAL or not record.name.startswith(NOISY_CLIENTS)


@contextlib.contextmanager
def clients_quiet():
    """`_clients_quiet` on the root handlers while the block runs: a worker starting against a broker
    it cannot reach says so in one line of its own, then keeps the clients' messages in its log."""
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_clients_quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_clients_quiet)


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The innermost sub-command parser the arguments name (`tally dlq inspect` -> inspect's)."""
    for word in argv:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if actions and word in actions[0].choices:
            parser = actions[0].choices[word]
    return parser


def expected_failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a failure a user can meet by the book (the cause, what to do); None for a bug."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    try:
        from streams.store.clickhouse import failure_line as store_failure_line
    except ModuleNotFoundError:  # a producer-only install has no store
        def store_failure_line(*_):
            return None
    from streams.store.pseudonym_key import KeyMismatch

    bootstrap = getattr(args, "bootstrap", None) or "the broker"
    if isinstance(exc, KafkaConnectionError) or (isinstance(exc, KafkaError) and "connect" in str(exc).lower()):
        return (f"cannot reach Kafka at {bootstrap}: start it (`tally broker start`) or pass --bootstrap "
                f"(env TALLY_BOOTSTRAP)")
    if isinstance(exc, KafkaError):
        return f"Kafka at {bootstrap} answered {type(exc).__name__}: {exc}; is the broker healthy (`tally broker status`)?"
    store_failure = store_failure_line(exc, getattr(args, "clickhouse", None) or "")
    if store_failure:
        return store_failure
    if isinstance(exc, KeyMismatch):
        return str(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # a file where a directory must be (--data-dir)
        return f"{exc.filename or exc}: a file is there, where a directory is needed; give a directory"
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"{exc.filename or exc}: {exc.strerror}"
    return None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
