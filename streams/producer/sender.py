"""The tracker's sending thread: takes the buffer's events in rounds and delivers them to Kafka.

It runs its own asyncio loop with one aiokafka producer (acks=all, idempotent). Each event goes to
its user's partition, by default packed per partition into UserActionBatch envelopes. What the
broker does not acknowledge goes back to the buffer and is retried with the same event id, so
downstream drops the duplicates; what it refuses for good is counted as failed.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from streams.contract import SCHEMA_VERSION, UserAction, partition_for_user
from streams.producer.arguments import valid_text
from streams.producer.buffer import EventBuffer
from streams.producer.envelopes import pack_envelopes

log = logging.getLogger("streams.producer.tracker")  # the SDK logs under one name, as users configure it


class Sender:
    """Owns the thread, the loop and the producer; the tracker's callers only touch the buffer."""

    def __init__(self, bootstrap: str, app: str, topic: str, options, buffer: EventBuffer, scrubber: Any):
        self.bootstrap, self.app, self.topic, self.options = bootstrap, app, topic, options
        self.buffer = buffer
        self.scrubber = scrubber
        self.delivered = 0
        self.failed = 0
        self._drops_logged = 0
        self._outage_logged = False
        self._progress = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._idle = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- what the tracker calls, from its callers' threads ---------------------------------------------

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._thread_main, name=f"tally-tracker-{self.app}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopping = True
        self.poke()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def settled(self) -> int:
        """Accepted events that ended: delivered, failed, or evicted from the buffer."""
        return self.delivered + self.failed + self.buffer.evicted

    def pending(self) -> int:
        return self.buffer.accepted - self.settled()

    def wait_settled(self, target: int, timeout: float) -> bool:
        """Block until `target` accepted events have ended; False on timeout or if the thread died."""
        deadline = time.monotonic() + timeout
        self.poke()
        with self._progress:
            while self.settled() < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return self.settled() >= target
                self._progress.wait(min(left, 0.05))
        return True

    def wake_if_idle(self) -> None:
        """Called after each append: wakes the loop only when it sleeps, so most calls pay for the append alone."""
        if self._idle:
            self._idle = False
            loop = self._loop
            if loop is not None:
                loop.call_soon_threadsafe(self._wake_now)

    def poke(self) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_now)
            except RuntimeError:  # loop already closed
                pass

    def report_drops(self) -> None:
        dropped = self.buffer.dropped
        if dropped > self._drops_logged:
            log.warning("tally tracker: dropped %d events (%d in all) because the buffer of %d was full; policy: "
                        "drop %s", dropped - self._drops_logged, dropped, self.options.buffer_size,
                        self.options.drop)
            self._drops_logged = dropped

    def build(self, fields: dict) -> UserAction:
        try:
            return self._build_as_is(fields)
        except UnicodeEncodeError:  # half a surrogate pair, e.g. a file name read with surrogateescape
            return self._build_as_is(valid_text(fields))

    def serialize(self, batch: list[dict]) -> list[tuple[bytes, bytes | None, dict, str]]:
        """(key, value or None if building or scrubbing failed, the pending event's fields, the user
        whose partition it goes to) per event."""
        out = []
        for fields in batch:
            try:
                action = self.build(fields)
                user = action.user  # the pipeline partitions by the id as the tool knows it
                if self.scrubber is not None:
                    self.scrubber.scrub_action(action)
                # keyed by the user as sent on (a pseudonymised id must not travel in clear in the
                # key), written to the partition of the id as the tool knows it
                out.append((action.user.encode("utf-8", "replace"), action.SerializeToString(), fields, user))
            except Exception:
                log.warning("tally tracker: event %s not sent: building or scrubbing failed", fields.get("event_id"),
                            exc_info=self.failed == 0)
                out.append((b"", None, fields, ""))
        return out

    # -- the thread ---------------------------------------------------------------------------------

    def _build_as_is(self, fields: dict) -> UserAction:
        action = UserAction(**{"host_name": self.options.host_name, "app": self.app, "schema_version": SCHEMA_VERSION,
                               **{k: v for k, v in fields.items() if k != "properties"}})
        if fields.get("properties"):
            action.properties.update(fields["properties"])
        return action

    def _wake_now(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _notify_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._run(loop))
        except Exception:
            log.exception("tally tracker: sending thread stopped")
        finally:
            self._notify_progress()
            loop.close()

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
                batch = self.buffer.take(self.options.batch_size)
                if not batch:
                    await self._sleep_until_woken(1.0)
                    continue
                if producer is None:
                    producer = await self._connect()
                    if producer is None:
                        self.buffer.requeue(batch)
                        await self._sleep_until_woken(wait, idle=False)
                        wait = min(wait * 2, longest_wait)
                        continue
                    wait = first_wait
                try:
                    await self._send(producer, batch)
                except Exception as exc:  # e.g. the topic's metadata never came: keep the events, reconnect
                    log.warning("tally tracker: sending failed (%r); retrying with the same event ids", exc)
                    self.buffer.requeue(batch)
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
            if len(self.buffer) or self._stopping:  # an event arrived before the flag was seen
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
        for key, value, item, user in self.serialize(batch):
            if value is None:
                self.failed += 1
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
                self.delivered += len(items)
            except (KafkaTimeoutError, KafkaConnectionError) as exc:
                retry.extend(items)
                last_error = exc
            except Exception as exc:
                if getattr(exc, "retriable", False):
                    retry.extend(items)
                    last_error = exc
                else:
                    self.failed += len(items)
                    log.warning("tally tracker: broker refused %d event(s), first %s: %r", len(items),
                                items[0].get("event_id"), exc)
        if retry:
            log.info("tally tracker: %d events will be retried with the same event ids: %r", len(retry), last_error)
            self.buffer.requeue(retry)
            await self._sleep_until_woken(self.options.reconnect_backoff_s[0], idle=False)

    async def _report_drops_periodically(self) -> None:
        interval = self.options.drop_log_interval_s
        while True:
            self.report_drops()
            await asyncio.sleep(interval)



async def _stop_quietly(producer) -> None:
    try:
        await producer.stop()
    except Exception:
        pass


