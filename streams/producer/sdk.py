"""The tracking SDK: `Tracker.track(...)`, the Amundsen-style `@action_logging` decorator, and `tally publish`.

Tracking never breaks the host. The caller's path only builds the event (JSON of the arguments,
secrets dropped, a time-ordered event id) and appends it to a bounded in-memory buffer; a
background thread running its own asyncio loop sends the buffer to Kafka with aiokafka, each event
to its user's partition (by default packed per partition into UserActionBatch envelopes, keyed by
user otherwise), retrying with the same event id so downstream can drop duplicates. No exception
from tracking reaches the caller.

    tracker = Tracker("127.0.0.1:19092", app="amundsen")
    tracker.track("search_table", "ada.lovelace@example.com", search_term="orders")

    @tracker.action_logging
    def _get_table_metadata(*, table_key: str, index: str, source: str) -> dict: ...
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import functools
import inspect
import json
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, TextIO

from streams.contract import ENVELOPE_HEADER, SCHEMA_VERSION, UserAction, new_event_id, partition_for_user

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "user-actions"
REDACTED = "[redacted]"
# Names of keyword arguments and properties whose values never leave the process.
SECRET_NAME = re.compile(
    r"passw|passphrase|secret|token(?!s)|api[_-]?key|authoriz|credential|cookie|private[_-]?key|^auth$|_auth$",
    re.IGNORECASE)
AUTO = "auto"  # scrubber=AUTO: use streams.stages.scrub's default policy when that module is importable
DropPolicy = Literal["oldest", "newest"]


# --- Pure helpers: arguments to JSON, secrets out -------------------------------------------------

def is_secret_name(name: object) -> bool:
    return isinstance(name, str) and SECRET_NAME.search(name) is not None


def redact_secrets(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with the values of secret-named keys replaced, at any depth of dicts and lists."""
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_name(k) else redact_secrets(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v, depth + 1) for v in value]
    return value


def _short_str(value: object, limit: int = 1024) -> str:
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON types only: non-string keys and unknown objects become strings, cycles are cut."""
    if depth > 16:
        return "..."
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {k if isinstance(k, str) else _short_str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    return _short_str(value)


# Built once: json.dumps with options builds a new encoder per call, a few µs on the hot path.
_ENCODER = json.JSONEncoder(default=_short_str, ensure_ascii=False, separators=(",", ":"))
_PLAIN_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def to_json(value: Any) -> str:
    """JSON text of `value`; what isn't JSON-serialisable is stringified. Never raises."""
    try:
        return _ENCODER.encode(value)
    except Exception:  # non-string keys, cycles, a __str__ that raises
        try:
            return _PLAIN_ENCODER.encode(_jsonable(value))
        except Exception:
            return json.dumps(_short_str(value))


def truncate_utf8(text: str, max_bytes: int) -> str:
    """At most `max_bytes` of UTF-8, cut on a character boundary."""
    if len(text) * 4 <= max_bytes:  # fast path: can't be too long
        return text
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, always half a pair: a whole pair is one code point


def valid_text(value: Any) -> Any:
    """`value` with every half of a surrogate pair in its strings replaced by U+FFFD: a Protobuf
    string must be UTF-8, and such a str has no UTF-8 form."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    return value


def bounded_json(value: Any, max_bytes: int) -> str:
    """JSON of `value`, replaced by a JSON note when longer than `max_bytes` (cut JSON would not parse)."""
    text = to_json(value)
    if len(text) * 4 <= max_bytes or len(text.encode("utf-8", "replace")) <= max_bytes:
        return text
    return json.dumps({"_truncated_bytes": len(text.encode("utf-8", "replace"))})


def error_text(exc: BaseException, max_bytes: int) -> str:
    return truncate_utf8(f"{type(exc).__name__}: {_short_str(exc, max_bytes)}", max_bytes)


def property_values(properties: dict[str, Any]) -> dict[str, str]:
    """Properties as the map<string,string> of the contract; secret-named ones redacted."""
    return {str(k): REDACTED if is_secret_name(k) else (v if isinstance(v, str) else to_json(v))
            for k, v in properties.items()}


def secret_positions(func: Callable) -> frozenset[int]:
    """Positions of parameters named like secrets, so `login(user, password)` called positionally is redacted too."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(i for i, p in enumerate(params)
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and is_secret_name(p.name))


def redact_args(args: tuple, positions: frozenset[int]) -> list:
    return [REDACTED if i in positions else redact_secrets(a, 1) for i, a in enumerate(args)]


# --- The bounded buffer between callers and the sending thread ------------------------------------

class EventBuffer:
    """Bounded FIFO. When full, `drop="oldest"` evicts the oldest event, `drop="newest"` refuses the new one.

    Every accepted event ends exactly once as delivered, failed, or `evicted`, which is what
    `Tracker.flush` counts on.
    """

    def __init__(self, capacity: int, drop: DropPolicy = "oldest"):
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        if drop not in ("oldest", "newest"):
            raise ValueError(f"drop policy must be 'oldest' or 'newest', not {drop!r}")
        self.capacity = capacity
        self.drop = drop
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.accepted = 0  # stored in the buffer
        self.evicted = 0   # stored, then pushed out by newer events
        self.refused = 0   # never stored (drop="newest" and full)

    @property
    def dropped(self) -> int:
        return self.evicted + self.refused

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item) -> bool:
        """Store `item`; False if the buffer was full and an event (old or this one) was dropped."""
        with self._lock:
            if len(self._items) < self.capacity:
                self._items.append(item)
                self.accepted += 1
                return True
            if self.drop == "newest":
                self.refused += 1
                return False
            self._items.popleft()
            self._items.append(item)
            self.accepted += 1
            self.evicted += 1
            return False

    def take(self, limit: int) -> list:
        with self._lock:
            count = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def requeue(self, items: list) -> None:
        """Put events that failed to send back at the front, oldest first; the bound and policy still hold."""
        with self._lock:
            self._items.extendleft(reversed(items))
            while len(self._items) > self.capacity:
                if self.drop == "oldest":
                    self._items.popleft()
                else:
                    self._items.pop()
                self.evicted += 1

    def snapshot(self) -> list:
        with self._lock:
            return list(self._items)


# --- The tracker -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrackerOptions:
    buffer_size: int = 10_000                 # events waiting for the broker, at most
    drop: DropPolicy = "oldest"               # which event goes when the buffer is full
    drop_log_interval_s: float = 60.0         # drops are logged at most once per interval
    batch_size: int = 500                     # events handed to aiokafka per round
    envelopes: bool = True                    # a round's events go as one UserActionBatch per partition
    max_envelope_bytes: int = 900_000         # under the broker's default message.max.bytes (1 MiB)
    request_timeout_ms: int = 15_000          # a send not acknowledged by then is retried
    reconnect_backoff_s: tuple[float, float] = (0.2, 5.0)  # first and longest wait between connects
    exit_flush_timeout_s: float = 5.0         # how long interpreter exit waits for delivery
    max_output_bytes: int = 4096              # output and error text are cut here
    max_args_bytes: int = 16_384              # larger argument JSON is replaced by a note of its size
    default_user: str = "unknown"             # when neither the call nor user_provider names one
    user_provider: Callable[[], str | None] | None = None  # e.g. lambda: flask_login.current_user.email
    scrubber: Any = AUTO                      # an object with scrub_action(UserAction), None, or AUTO
    host_name: str = field(default_factory=socket.gethostname)
    producer_config: dict = field(default_factory=dict)  # more AIOKafkaProducer arguments (TLS, SASL, ...)
    autostart: bool = True                    # False: buffer only until start() (tests, forking servers)


@dataclass(frozen=True)
class TrackerStats:
    tracked: int     # events created by track() and the decorator
    delivered: int   # acknowledged by the broker
    dropped: int     # lost to a full buffer (evicted or refused)
    failed: int      # refused by the broker for good (e.g. too large) or by the scrubber
    buffered: int    # not yet delivered or dropped: in the buffer or being sent
    internal_errors: int  # tracking bugs swallowed to protect the host


class _QuietOutage(logging.Filter):
    """aiokafka logs each failed connect as ERROR; from a tracker's thread that is an expected outage
    (the tracker warns once itself), so those records are turned into DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.ERROR and record.threadName.startswith("tally-tracker")
                and str(record.msg).startswith("Unable connect")):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_quiet_outage = _QuietOutage()


class Tracker:
    """Configured once; `track()` and `@action_logging` are safe to call from any thread or event loop."""

    def __init__(self, bootstrap: str, app: str, topic: str = DEFAULT_TOPIC, **options):
        self.bootstrap = bootstrap
        self.app = app
        self.topic = topic
        self.options = TrackerOptions(**options)
        self._buffer = EventBuffer(self.options.buffer_size, self.options.drop)
        self._scrubber = _resolve_scrubber(self.options.scrubber)
        self._delivered = 0
        self._failed = 0
        self._internal_errors = 0
        self._drops_logged = 0
        self._outage_logged = False
        self._progress = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._idle = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        if self.options.autostart:
            self.start()

    # -- the caller's path: build and enqueue, nothing else -------------------------------------

    def track(self, command: str, user: str | None = None, /, **properties) -> None:
        """Record one event now. Properties become the event's `properties` map (secret names redacted)."""
        try:
            now = int(time.time() * 1000)
            self._enqueue(user, {
                "command": command, "start_epoch_ms": now, "end_epoch_ms": now,
                "properties": property_values(properties) if properties else None})
        except Exception:
            self._internal_error()

    def action_logging(self, func: Callable) -> Callable:
        """Decorator recording each call as Amundsen's action_logging does; the call itself is untouched."""
        return _decorate(func, lambda: self)

    def _record_call(self, command: str, positions: frozenset[int], start_ms: int, args: tuple, kwargs: dict,
                     result: Any, exc: BaseException | None) -> None:
        try:
            opts = self.options
            fields = {
                "command": command, "start_epoch_ms": start_ms, "end_epoch_ms": int(time.time() * 1000),
                "pos_args_json": bounded_json(redact_args(args, positions), opts.max_args_bytes),
                "keyword_args_json": bounded_json(redact_secrets(kwargs), opts.max_args_bytes),
            }
            if exc is None:
                fields["output"] = "" if result is None else truncate_utf8(to_json(result), opts.max_output_bytes)
            else:
                fields["error"] = error_text(exc, opts.max_output_bytes)
            self._enqueue(None, fields)
        except Exception:
            self._internal_error()

    def _enqueue(self, user: str | None, fields: dict) -> None:
        user = user or self._current_user()
        fields["user"] = user
        fields["event_id"] = new_event_id(fields["start_epoch_ms"])
        self._buffer.put(fields)
        if self._idle:  # wake the sender only when it sleeps: most calls pay for an append alone
            self._idle = False
            loop = self._loop
            if loop is not None:
                loop.call_soon_threadsafe(self._wake_now)

    def _current_user(self) -> str:
        provider = self.options.user_provider
        if provider is not None:
            try:
                user = provider()
                if user:
                    return str(user)
            except Exception:
                pass
        return self.options.default_user

    def _internal_error(self) -> None:
        self._internal_errors += 1
        if self._internal_errors == 1:
            log.warning("tally tracker: an event could not be recorded (further ones are counted, not logged)",
                        exc_info=True)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "Tracker":
        """Start the sending thread (done by the constructor unless autostart=False)."""
        if self._thread is None:
            aiokafka_client_log = logging.getLogger("aiokafka")  # the client logs here
            if _quiet_outage not in aiokafka_client_log.filters:
                aiokafka_client_log.addFilter(_quiet_outage)
            self._thread = threading.Thread(target=self._thread_main, name=f"tally-tracker-{self.app}", daemon=True)
            self._thread.start()
            atexit.register(self._close_at_exit)
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event tracked so far is delivered or dropped; False on timeout. Blocking."""
        target = self._buffer.accepted
        deadline = time.monotonic() + timeout
        self._poke()
        with self._progress:
            while self._settled() < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return self._settled() >= target
                self._progress.wait(min(left, 0.05))
        return True

    async def aflush(self, timeout: float = 10.0) -> bool:
        """`flush` for asyncio code: waits in a worker thread, so the caller's loop keeps running."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to `timeout`, default exit_flush_timeout_s), then stop the sending thread."""
        timeout = self.options.exit_flush_timeout_s if timeout is None else timeout
        delivered_all = self.flush(timeout) if self._thread is not None else len(self._buffer) == 0
        self._stopping = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, timeout))
        atexit.unregister(self._close_at_exit)
        self._report_drops()
        if not delivered_all and self._pending():
            log.warning("tally tracker: closing with %d events undelivered (broker %s unreachable?)",
                        self._pending(), self.bootstrap)
        return delivered_all

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> TrackerStats:
        return TrackerStats(tracked=self._buffer.accepted + self._buffer.refused, delivered=self._delivered, dropped=self._buffer.dropped,
                            failed=self._failed, buffered=self._pending(), internal_errors=self._internal_errors)

    def buffered_events(self) -> list[UserAction]:
        """The events waiting to be sent, as they would be sent (for inspection and tests)."""
        return [self._build(fields) for fields in self._buffer.snapshot()]

    def _settled(self) -> int:
        return self._delivered + self._failed + self._buffer.evicted

    def _pending(self) -> int:
        return self._buffer.accepted - self._settled()

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_now)
            except RuntimeError:  # loop already closed
                pass

    def _wake_now(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _notify_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _report_drops(self) -> None:
        dropped = self._buffer.dropped
        if dropped > self._drops_logged:
            log.warning("tally tracker: dropped %d events (%d in all) because the buffer of %d was full; policy: "
                        "drop %s", dropped - self._drops_logged, dropped, self.options.buffer_size,
                        self.options.drop)
            self._drops_logged = dropped

    # -- the sending thread -------------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._run(loop))
        except Exception:
            log.exception("tally tracker: sending thread stopped")
        finally:
            self._notify_progress()
            loop.close()

    def _build(self, fields: dict) -> UserAction:
        try:
            return self._build_as_is(fields)
        except UnicodeEncodeError:  # half a surrogate pair, e.g. a file name read with surrogateescape
            return self._build_as_is(valid_text(fields))

    def _build_as_is(self, fields: dict) -> UserAction:
        action = UserAction(host_name=self.options.host_name, app=self.app, schema_version=SCHEMA_VERSION,
                            **{k: v for k, v in fields.items() if k != "properties"})
        if fields.get("properties"):
            action.properties.update(fields["properties"])
        return action

    def _serialize(self, batch: list[dict]) -> list[tuple[bytes, bytes | None, dict]]:
        """(key, value or None if building or scrubbing failed, the pending event's fields) per event."""
        out = []
        for fields in batch:
            try:
                action = self._build(fields)
                if self._scrubber is not None:
                    self._scrubber.scrub_action(action)
                # keyed by the user as sent: a pseudonymised id must not travel in clear in the key
                out.append((action.user.encode("utf-8", "replace"), action.SerializeToString(), fields))
            except Exception:
                log.warning("tally tracker: event %s not sent: building or scrubbing failed", fields.get("event_id"),
                            exc_info=self._failed == 0)
                out.append((b"", None, fields))
        return out

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = asyncio.Event()
        self._loop = loop
        reporter = asyncio.create_task(self._report_drops_periodically())
        producer = None
        first_wait, longest_wait = self.options.reconnect_backoff_s
        wait = first_wait
        try:
            while True:
                if self._stopping:  # close() has flushed already
                    break
                batch = self._buffer.take(self.options.batch_size)
                if not batch:
                    await self._sleep_until_woken(1.0)
                    continue
                if producer is None:
                    producer = await self._connect()
                    if producer is None:
                        self._buffer.requeue(batch)
                        await self._sleep_until_woken(wait, idle=False)
                        wait = min(wait * 2, longest_wait)
                        continue
                    wait = first_wait
                try:
                    await self._send(producer, batch)
                except Exception as exc:  # e.g. the topic's metadata never came: keep the events, reconnect
                    log.warning("tally tracker: sending failed (%r); retrying with the same event ids", exc)
                    self._buffer.requeue(batch)
                    await _stop_quietly(producer)
                    producer = None
                    await self._sleep_until_woken(wait, idle=False)
                    wait = min(wait * 2, longest_wait)
                    continue
                self._notify_progress()
        finally:
            reporter.cancel()
            if producer is not None:
                await _stop_quietly(producer)

    async def _sleep_until_woken(self, seconds: float, idle: bool = True) -> None:
        if idle:
            self._idle = True
            if len(self._buffer) or self._stopping:  # an event arrived before the flag was seen
                self._idle = False
                return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()  # cleared after waking, so a poke that came early is not lost
        self._idle = False

    async def _connect(self):
        from aiokafka import AIOKafkaProducer
        settings = {"client_id": f"tally-tracker-{self.app}", "acks": "all", "enable_idempotence": True,
                    "linger_ms": 5, "request_timeout_ms": self.options.request_timeout_ms,
                    **self.options.producer_config}
        try:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **settings)
        except Exception as exc:  # a setting aiokafka refuses: nothing will be sent until it is fixed
            if not self._outage_logged:
                log.error("tally tracker: producer settings refused (%r); buffering up to %d events",
                          exc, self.options.buffer_size)
                self._outage_logged = True
            return None
        try:
            await producer.start()
            if self._outage_logged:
                log.warning("tally tracker: broker %s reachable again; sending the buffered events", self.bootstrap)
                self._outage_logged = False
            return producer
        except Exception as exc:
            if not self._outage_logged:  # once per outage; aiokafka's own errors are quieted above
                log.warning("tally tracker: broker %s not reachable (%s); buffering up to %d events",
                            self.bootstrap, type(exc).__name__, self.options.buffer_size)
                self._outage_logged = True
            await _stop_quietly(producer)
            return None

    async def _send(self, producer, batch: list) -> None:
        from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
        serialized = []
        for key, value, item in self._serialize(batch):
            if value is None:
                self._failed += 1
            else:
                serialized.append((key, value, item))
        if self.options.envelopes and serialized:
            partitions = len(await producer.partitions_for(self.topic))
            messages = pack_envelopes(serialized, partitions, self.options.max_envelope_bytes)
        else:
            messages = [(key, value, None, None, [item]) for key, value, item in serialized]
        sends = []
        for key, value, partition, headers, items in messages:
            try:
                sends.append((items, await producer.send(self.topic, value, key=key, partition=partition,
                                                         headers=headers)))
            except Exception as exc:
                sends.append((items, exc))
        retry = []
        for items, sent in sends:
            try:
                if isinstance(sent, BaseException):
                    raise sent
                await sent
                self._delivered += len(items)
            except (KafkaTimeoutError, KafkaConnectionError) as exc:
                retry.extend(items)
                last_error = exc
            except Exception as exc:
                if getattr(exc, "retriable", False):
                    retry.extend(items)
                    last_error = exc
                else:
                    self._failed += len(items)
                    log.warning("tally tracker: broker refused %d event(s), first %s: %r", len(items),
                                items[0].get("event_id"), exc)
        if retry:
            log.info("tally tracker: %d events will be retried with the same event ids: %r", len(retry), last_error)
            self._buffer.requeue(retry)
            await self._sleep_until_woken(self.options.reconnect_backoff_s[0], idle=False)

    async def _report_drops_periodically(self) -> None:
        interval = self.options.drop_log_interval_s
        while True:
            self._report_drops()
            await asyncio.sleep(interval)


async def _stop_quietly(producer) -> None:
    try:
        await producer.stop()
    except Exception:
        pass


def pack_envelopes(serialized: list[tuple[bytes, bytes, Any]], partitions: int, max_bytes: int,
                   max_actions: int | None = None) -> list[tuple[bytes, bytes, int, list, list]]:
    """(key, UserAction bytes, item) per event -> (key, UserActionBatch bytes, partition, headers, items)
    per Kafka message: each event goes to the partition its key (the user as sent) hashes to, as the
    default partitioner would put it, in order, at most `max_bytes` (and `max_actions`) per envelope
    (a bigger event goes alone). The consumer pays its per-message cost once per envelope."""
    by_partition: dict[int, list] = {}
    for entry in serialized:
        by_partition.setdefault(partition_for_user(entry[0].decode("utf-8", "replace"), partitions), []).append(entry)
    messages = []
    for partition, entries in by_partition.items():
        chunk: list = []
        size = 0
        for entry in entries:
            framed = _envelope_entry(entry[1])
            if chunk and (size + len(framed) > max_bytes or len(chunk) == max_actions):
                messages.append(_envelope_message(chunk, partition))
                chunk, size = [], 0
            chunk.append((entry, framed))
            size += len(framed)
        messages.append(_envelope_message(chunk, partition))
    return messages


def _envelope_entry(action_bytes: bytes) -> bytes:
    """One `repeated UserAction actions = 1` entry on the wire: tag, varint length, the message."""
    length, varint = len(action_bytes), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            return b"\x0a" + bytes(varint) + action_bytes


def _envelope_message(chunk: list, partition: int) -> tuple[bytes, bytes, int, list, list]:
    (first_key, _, _), _ = chunk[0]
    return (first_key, b"".join(framed for _, framed in chunk), partition, [ENVELOPE_HEADER],
            [item for (_, _, item), _ in chunk])


def _resolve_scrubber(scrubber: Any):
    if not (isinstance(scrubber, str) and scrubber == AUTO):
        return scrubber
    try:
        from streams.config import from_env
        from streams.stages.scrub import Scrubber, load_policy  # optional for the SDK
        # the pipeline's policy and HMAC key (TALLY_SCRUB_POLICY, TALLY_HMAC_KEY): pseudonyms made here
        # must equal the pipeline's, or events would no longer join their user's profile
        settings = from_env()
        return Scrubber(load_policy(settings.scrub_policy, settings.hmac_key))
    except Exception as exc:
        log.debug("tally tracker: no scrub policy applied at the source (%s)", exc)
        return None


# --- The decorator ---------------------------------------------------------------------------------

_default_tracker: Tracker | None = None


def configure(bootstrap: str, app: str, topic: str = DEFAULT_TOPIC, **options) -> Tracker:
    """Make the process-wide tracker used by `track()` and a bare `@action_logging`."""
    global _default_tracker
    if _default_tracker is not None:
        _default_tracker.close(timeout=0)
    _default_tracker = Tracker(bootstrap, app, topic, **options)
    return _default_tracker


def default_tracker() -> Tracker | None:
    return _default_tracker


def track(command: str, user: str | None = None, /, **properties) -> None:
    """`Tracker.track` on the process-wide tracker; does nothing before `configure()`."""
    tracker = _default_tracker
    if tracker is not None:
        tracker.track(command, user, **properties)


def action_logging(func: Callable | None = None, *, tracker: Tracker | None = None):
    """Amundsen-compatible decorator: `@action_logging`, or `@action_logging(tracker=t)`.

    Without a tracker it uses the one from `configure()` at call time (decorating at import time is
    fine); before `configure()` the function just runs.
    """
    def resolve() -> Tracker | None:
        return tracker if tracker is not None else _default_tracker

    if func is None:
        return lambda f: _decorate(f, resolve)
    return _decorate(func, resolve)


def _decorate(func: Callable, resolve: Callable[[], Tracker | None]) -> Callable:
    command = getattr(func, "__name__", None) or _short_str(func)
    positions = secret_positions(func)

    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def async_wrapper(*args, **kwargs):
            start_ms = int(time.time() * 1000)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                _record(resolve, command, positions, start_ms, args, kwargs, None, exc)
                raise
            _record(resolve, command, positions, start_ms, args, kwargs, result, None)
            return result
        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        start_ms = int(time.time() * 1000)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _record(resolve, command, positions, start_ms, args, kwargs, None, exc)
            raise
        _record(resolve, command, positions, start_ms, args, kwargs, result, None)
        return result
    return wrapper


def _record(resolve, command, positions, start_ms, args, kwargs, result, exc) -> None:
    try:
        tracker = resolve()
        if tracker is not None:
            tracker._record_call(command, positions, start_ms, args, kwargs, result, exc)
    except Exception:
        pass


# --- JSON lines <-> UserAction, and publishing with acks (tally publish, tally generate) ----------

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
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
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
