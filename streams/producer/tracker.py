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

import asyncio
import atexit
import functools
import inspect
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from streams.contract import SCHEMA_VERSION, UserAction, new_event_id, partition_for_user
from streams.producer.arguments import (AUTO, DEFAULT_TOPIC, DropPolicy, _short_str, bounded_json, error_text,
                                        property_values, redact_args, redact_secrets, secret_positions, to_json,
                                        truncate_utf8, valid_text)
from streams.producer.buffer import EventBuffer
from streams.producer.envelopes import pack_envelopes

log = logging.getLogger(__name__)


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

    def record(self, fields: dict) -> None:
        """Record an action measured elsewhere (another tool's action log, e.g. Amundsen's): `fields`
        by the contract's names (command, start/end epoch ms, user, host_name, the arguments' JSON,
        output, error, the front-end fields, properties). Never raises."""
        try:
            fields = dict(fields)
            self._enqueue(fields.pop("user", None), fields)
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
        action = UserAction(**{"host_name": self.options.host_name, "app": self.app, "schema_version": SCHEMA_VERSION,
                               **{k: v for k, v in fields.items() if k != "properties"}})
        if fields.get("properties"):
            action.properties.update(fields["properties"])
        return action

    def _serialize(self, batch: list[dict]) -> list[tuple[bytes, bytes | None, dict]]:
        """(key, value or None if building or scrubbing failed, the pending event's fields) per event."""
        out = []
        for fields in batch:
            try:
                action = self._build(fields)
                user = action.user  # the pipeline partitions by the id as the tool knows it
                if self._scrubber is not None:
                    self._scrubber.scrub_action(action)
                # keyed by the user as sent on (a pseudonymised id must not travel in clear in the
                # key), written to the partition of the id as the tool knows it
                out.append((action.user.encode("utf-8", "replace"), action.SerializeToString(), fields, user))
            except Exception:
                log.warning("tally tracker: event %s not sent: building or scrubbing failed", fields.get("event_id"),
                            exc_info=self._failed == 0)
                out.append((b"", None, fields, ""))
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
        shard_users = []
        for key, value, item, user in self._serialize(batch):
            if value is None:
                self._failed += 1
            else:
                serialized.append((key, value, item))
                shard_users.append(user)
        partitions = len(await producer.partitions_for(self.topic)) if serialized else 0
        if self.options.envelopes and serialized:
            messages = pack_envelopes(serialized, partitions, self.options.max_envelope_bytes, shard_users=shard_users)
        else:
            messages = [(key, value, partition_for_user(user, partitions), None, [item])
                        for (key, value, item), user in zip(serialized, shard_users)]
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


def _resolve_scrubber(scrubber: Any):
    if not (isinstance(scrubber, str) and scrubber == AUTO):
        return scrubber
    try:
        from streams.config import from_env
        from streams.stages.scrub import Scrubber, SourceScrubber, load_policy  # optional for the SDK
        # the pipeline's policy and HMAC key (TALLY_SCRUB_POLICY, TALLY_HMAC_KEY): pseudonyms made here
        # must equal the pipeline's, or events would no longer join their user's profile
        settings = from_env()
        if not settings.hmac_key:
            # no deployment key here: scrub secrets, but leave pseudonyms to the worker, whose key
            # (its data directory's) may not be the fixed development one
            return SourceScrubber(load_policy(settings.scrub_policy, SourceScrubber.NO_KEY))
        return Scrubber(load_policy(settings.scrub_policy, settings.hmac_key))
    except Exception as exc:
        log.debug("tally tracker: no scrub policy applied at the source (%s)", exc)
        return None


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
