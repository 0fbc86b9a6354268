"""JSON lines <-> UserAction, and publishing with acks: `tally publish` (and `tally generate`)."""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import stat
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

from streams.contract import SCHEMA_VERSION, UserAction, new_event_id
from streams.producer.arguments import to_json


_FIELDS = {f.name: f for f in UserAction.DESCRIPTOR.fields}


def action_from_json(obj: Any, default_app: str | None = None, host_name: str | None = None,
                     now_ms: int | None = None) -> UserAction:
    """One JSON object (UserAction field names) to a UserAction; ValueError names what is wrong.

    Missing event_id gets a new one; missing start time is now; missing end time is the start.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
    action = UserAction()
    for name, value in obj.items():
        if value is None:
            continue
        if name == "properties":
            if not isinstance(value, dict):
                raise ValueError("'properties' must be an object")
            action.properties.update({str(k): v if isinstance(v, str) else to_json(v) for k, v in value.items()})
        elif _FIELDS[name].type == _FIELDS[name].TYPE_STRING:
            if not isinstance(value, str):
                raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")
            setattr(action, name, value)
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"'{name}' must be an integer, got {json.dumps(value)}")
            try:
                setattr(action, name, value)
            except ValueError as exc:
                raise ValueError(f"'{name}': {exc}") from None
    for required in ("command", "user"):
        if not getattr(action, required):
            raise ValueError(f"missing '{required}'")
    if not action.app:
        if not default_app:
            raise ValueError("missing 'app' (set it per line or pass --app)")
        action.app = default_app
    if not action.start_epoch_ms:
        action.start_epoch_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if not action.end_epoch_ms:
        action.end_epoch_ms = action.start_epoch_ms
    if not action.event_id:
        action.event_id = new_event_id(action.start_epoch_ms)
    if not action.schema_version:
        action.schema_version = SCHEMA_VERSION
    if not action.host_name and host_name:
        action.host_name = host_name
    return action


def action_to_json(action: UserAction) -> dict:
    """The JSON object `action_from_json` reads back: set fields only, integers as numbers."""
    out: dict = {}
    for descriptor, value in action.ListFields():
        out[descriptor.name] = dict(value) if descriptor.name == "properties" else value
    return out


async def send_with_acks(bootstrap: str, topic: str, messages, rate: float = 0.0, window: int = 2000,
                         on_result: Callable[[Any, BaseException | None], None] | None = None,
                         **producer_config) -> tuple[int, int]:
    """Send (key, value, tag) triples from an iterable or async iterable; returns (acknowledged, failed).

    `rate` > 0 paces sends to that many per second; 0 sends as fast as the broker acknowledges.
    At most `window` sends are in flight; `on_result(tag, error)` hears about each one.
    """
    from aiokafka import AIOKafkaProducer
    config = {"acks": "all", "enable_idempotence": True, "linger_ms": 10, "max_batch_size": 256 * 1024,
              **producer_config}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **config)
    await producer.start()
    acked = failed = 0
    in_flight: collections.deque = collections.deque()

    async def settle(count: int) -> None:
        nonlocal acked, failed
        for _ in range(count):
            tag, future = in_flight.popleft()
            try:
                await future
                acked += 1
                error = None
            except Exception as exc:
                failed += 1
                error = exc
            if on_result is not None:
                on_result(tag, error)

    try:
        started = time.monotonic()
        sent = 0
        async for key, value, tag in _aiter(messages):
            if rate > 0 and sent % 64 == 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            try:
                in_flight.append((tag, await producer.send(topic, value, key=key)))
            except Exception as exc:
                failed += 1
                if on_result is not None:
                    on_result(tag, exc)
            sent += 1
            if len(in_flight) >= window:
                await settle(len(in_flight) // 2)
        await settle(len(in_flight))
    finally:
        await producer.stop()
    return acked, failed


async def _aiter(items):
    if hasattr(items, "__aiter__"):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def parse_lines(lines: Iterable[str], default_app: str | None) -> Iterator[tuple[int, UserAction | None, str]]:
    """(line number, action or None, reason) per non-blank line."""
    host = socket.gethostname()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, action_from_json(json.loads(line), default_app, host), ""
        except json.JSONDecodeError as exc:
            yield number, None, f"not JSON: {exc.msg} at column {exc.colno}"
        except ValueError as exc:
            yield number, None, str(exc)


async def publish_lines(stream: TextIO, bootstrap: str, topic: str, default_app: str | None,
                        errors: TextIO = sys.stderr) -> tuple[int, int]:
    """Publish JSON lines as UserAction Protobuf keyed by user; returns (published, rejected)."""
    rejected = 0

    def reject(number: int, reason: str) -> None:
        nonlocal rejected
        rejected += 1
        print(f"line {number}: {reason}", file=errors, flush=True)

    async def messages():
        parsed = parse_lines(iter(stream.readline, ""), default_app)
        from_pipe = not _is_regular_file(stream)
        while True:
            # a pipe is read in a worker thread, so waiting for the next line doesn't stall sends
            item = await asyncio.to_thread(next, parsed, None) if from_pipe else next(parsed, None)
            if item is None:
                return
            number, action, reason = item
            if action is None:
                reject(number, reason)
                continue
            yield action.user.encode("utf-8"), action.SerializeToString(), number

    def on_result(number: int, error: BaseException | None) -> None:
        if error is not None:
            reject(number, f"send failed: {error!r}")

    published, _ = await send_with_acks(bootstrap, topic, messages(), on_result=on_result)
    return published, rejected


def _is_regular_file(stream: TextIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def add_cli(subparsers) -> None:
    from streams.cli import add_settings_args
    parser = subparsers.add_parser(
        "publish", help="publish JSON lines (one UserAction per line) to Kafka as Protobuf",
        description="Read JSON lines (UserAction field names; 'properties' an object; integer timestamps) "
                    "from FILE or stdin and publish them as Protobuf keyed by user. Bad lines are reported "
                    "as 'line N: reason' on stderr and skipped; exit code 1 if any were rejected.")
    parser.add_argument("file", nargs="?", default="-", help="JSON lines file, or - for stdin (default)")
    parser.add_argument("--topic", help="default: the user-actions topic")
    parser.add_argument("--app", help="app for lines that don't name one")
    add_settings_args(parser)
    parser.set_defaults(func=_cli_publish)


def _cli_publish(args: argparse.Namespace) -> int:
    from streams.cli import settings_from_args
    settings = settings_from_args(args)
    topic = args.topic or settings.topics.user_actions
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}; give a JSON-lines file, or - for standard input",
              file=sys.stderr)
        return 2
    try:
        published, rejected = asyncio.run(publish_lines(stream, settings.bootstrap, topic, args.app))
    except Exception as exc:  # the broker, not a line, is the problem
        if "Kafka" not in type(exc).__name__:
            raise
        print(f"cannot publish to Kafka at {settings.bootstrap}: {exc}", file=sys.stderr)
        return 2
    finally:
        if stream is not sys.stdin:
            stream.close()
    print(f"published {published}, rejected {rejected}")
    return 1 if rejected else 0
