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
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from streams.contract import UserAction, new_event_id
from streams.producer.arguments import (AUTO, DEFAULT_TOPIC, DropPolicy, _short_str, bounded_json, error_text,
                                        property_values, redact_args, redact_secrets, secret_positions, to_json,
                                        truncate_utf8)
from streams.producer.buffer import EventBuffer
from streams.producer.sender import Sender

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
        self._sender = Sender(bootstrap, app, topic, self.options, self._buffer,
                              _resolve_scrubber(self.options.scrubber))
        self._internal_errors = 0
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
        self._sender.wake_if_idle()

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
        if not self._sender.started:
            aiokafka_client_log = logging.getLogger("aiokafka")  # the client logs here
            if _quiet_outage not in aiokafka_client_log.filters:
                aiokafka_client_log.addFilter(_quiet_outage)
            self._sender.start()
            atexit.register(self._close_at_exit)
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event tracked so far is delivered or dropped; False on timeout. Blocking."""
        return self._sender.wait_settled(self._buffer.accepted, timeout)

    async def aflush(self, timeout: float = 10.0) -> bool:
        """`flush` for asyncio code: waits in a worker thread, so the caller's loop keeps running."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to `timeout`, default exit_flush_timeout_s), then stop the sending thread."""
        timeout = self.options.exit_flush_timeout_s if timeout is None else timeout
        delivered_all = self.flush(timeout) if self._sender.started else len(self._buffer) == 0
        self._sender.stop(timeout=max(1.0, timeout))
        atexit.unregister(self._close_at_exit)
        self._sender.report_drops()
        if not delivered_all and self._sender.pending():
            log.warning("tally tracker: closing with %d events undelivered (broker %s unreachable?)",
                        self._sender.pending(), self.bootstrap)
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
        sender = self._sender
        return TrackerStats(tracked=self._buffer.accepted + self._buffer.refused, delivered=sender.delivered,
                            dropped=self._buffer.dropped, failed=sender.failed, buffered=sender.pending(),
                            internal_errors=self._internal_errors)

    def buffered_events(self) -> list[UserAction]:
        """The events waiting to be sent, as they would be sent (for inspection and tests)."""
        return [self._sender.build(fields) for fields in self._buffer.snapshot()]


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
