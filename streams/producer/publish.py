"""JSON lines <-> UserAction, and publishing with acks, one per message or in envelopes (`tally publish`, `tally generate`)."""
from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TextIO

from streams.contract import SCHEMA_VERSION, UserAction, new_event_id
from streams.producer.arguments import to_json
from streams.producer.envelopes import pack_envelopes

ENVELOPE_MAX_BYTES = 900_000  # under the broker's default message.max.bytes (1 MiB)


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
                         on_result: Callable[[Any, BaseException | None, Any], None] | None = None,
                         **producer_config) -> tuple[int, int]:
    """Send messages from an iterable or async iterable; returns (acknowledged, failed) messages.

    A message is (key, value, tag), or (key, value, tag, partition, headers). `rate` > 0 paces
    sends to that many per second; 0 sends as fast as the broker acknowledges. At most `window`
    sends are in flight; `on_result(tag, error, metadata)` hears about each one (metadata has the
    partition and offset it was written at).
    """
    from aiokafka import AIOKafkaProducer
    config = {"acks": "all", "enable_idempotence": True, "linger_ms": 10, "max_batch_size": 1024 * 1024,
              "max_request_size": 4 * 1024 * 1024, **producer_config}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **config)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    acked = failed = 0
    in_flight: collections.deque = collections.deque()

    async def settle(count: int) -> None:
        nonlocal acked, failed
        for _ in range(count):
            tag, future = in_flight.popleft()
            metadata = error = None
            try:
                metadata = await future
                acked += 1
            except Exception as exc:
                failed += 1
                error = exc
            if on_result is not None:
                on_result(tag, error, metadata)

    try:
        started = time.monotonic()
        sent = 0
        async for key, value, tag, *placement in _aiter(messages):
            partition, headers = placement if placement else (None, None)
            if rate > 0 and sent % 64 == 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            try:
                in_flight.append((tag, await producer.send(topic, value, key=key, partition=partition,
                                                           headers=headers)))
            except Exception as exc:
                failed += 1
                if on_result is not None:
                    on_result(tag, exc, None)
            sent += 1
            if len(in_flight) >= window:
                await settle(len(in_flight) // 2)
            ready = 0
            while ready < len(in_flight) and in_flight[ready][1].done():
                ready += 1
            await settle(ready)  # heard as soon as they are acknowledged (progress), without waiting
        await settle(len(in_flight))
    finally:
        await producer.stop()
    return acked, failed


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions `topic` has (envelopes are packed per partition)."""
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    try:
        await producer.start()
        return len(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def envelope_messages(items, partitions: int, max_bytes: int = ENVELOPE_MAX_BYTES,
                            max_actions: int | None = None, round_size: int = 20_000, round_seconds: float = 0.2,
                            rate: float = 0.0):
    """(UserAction, tag) items -> (key, UserActionBatch, [tags], partition, headers) messages: each
    round of up to `round_size` events (or `round_seconds`, or `rate` events/s) packed into one
    envelope per partition, every event in the partition of its user id as sent."""
    round_: list = []
    opened = started = time.monotonic()
    sent = 0
    async for action, tag in _aiter(items):
        round_.append((action.user.encode("utf-8", "surrogatepass"), action.SerializeToString(), tag))
        now = time.monotonic()
        if len(round_) >= round_size or now - opened >= round_seconds:
            for key, value, partition, headers, tags in pack_envelopes(round_, partitions, max_bytes, max_actions):
                yield key, value, tags, partition, headers
            sent += len(round_)
            round_, opened = [], now
            ahead = sent / rate - (now - started) if rate > 0 else 0
            if ahead > 0:
                await asyncio.sleep(ahead)
    for key, value, partition, headers, tags in pack_envelopes(round_, partitions, max_bytes, max_actions):
        yield key, value, tags, partition, headers


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
        text = line.rstrip("\r\n")
        try:
            yield number, action_from_json(json.loads(text), default_app, host), ""
        except json.JSONDecodeError as exc:
            if exc.pos >= len(text.rstrip()):
                yield number, None, f"not JSON: it ends before its object or list is closed (column {exc.colno})"
            else:
                yield number, None, f"not JSON: {exc.msg} at column {exc.colno}"
        except ValueError as exc:
            yield number, None, str(exc)


@dataclass
class Published:
    """What `publish_lines` did: events acknowledged, lines rejected, and where the events went."""
    events: int = 0
    rejected: int = 0
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (first, last) written

    def wrote(self, partition: int, offset: int) -> None:
        first, last = self.offsets.get(partition, (offset, offset))
        self.offsets[partition] = (min(first, offset), max(last, offset))


async def publish_lines(stream: TextIO, bootstrap: str, topic: str, default_app: str | None,
                        errors: TextIO = sys.stderr, envelopes: bool = True,
                        progress: Callable[[int, int], None] | None = None) -> Published:
    """Publish JSON lines as UserAction Protobuf, packed in envelopes per partition (or one message
    per event, keyed by user). `progress(events acknowledged, characters read)` hears after each ack."""
    done = Published()
    read = 0

    def reject(number: int, reason: str) -> None:
        done.rejected += 1
        print(f"line {number}: {reason}", file=errors, flush=True)

    def lines():
        nonlocal read
        for line in iter(stream.readline, ""):
            read += len(line)
            yield line

    async def actions():
        parsed = parse_lines(lines(), default_app)
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
            yield action, number

    def on_result(numbers, error: BaseException | None, metadata) -> None:
        numbers = numbers if isinstance(numbers, list) else [numbers]
        if error is not None:
            for number in numbers:
                reject(number, f"send failed: {error!r}")
            return
        done.events += len(numbers)
        done.wrote(metadata.partition, metadata.offset)
        if progress is not None:
            progress(done.events, read)

    if envelopes:
        messages = envelope_messages(actions(), await partition_count(bootstrap, topic))
    else:
        messages = ((action.user.encode("utf-8", "surrogatepass"), action.SerializeToString(), number)
                    async for action, number in actions())
    await send_with_acks(bootstrap, topic, messages, on_result=on_result)
    return done


def _is_regular_file(stream: TextIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False
