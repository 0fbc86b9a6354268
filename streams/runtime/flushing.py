"""The actions agent's batches on their way out: the pending one, cut at an insert's worth of rows
or at its age, and at most one in flight, made durable and then committed.

A batch's offsets are committed only once its rows are in ClickHouse and its sends acknowledged,
and batches become durable one at a time, in order, so a commit never passes a row the store
doesn't have. `drain` makes everything read durable before Faust lets partitions go.
"""
from __future__ import annotations

import asyncio
import logging
import time

from streams.runtime.batching import DurableWrite, PendingBatch
from streams.runtime.steps import cut

log = logging.getLogger(__name__)


class Batches:
    def __init__(self, settings, durable, reader, active_days, app) -> None:
        self.settings, self.durable, self.reader, self.active_days, self.app = settings, durable, reader, active_days, app
        self.pending = PendingBatch()
        self.in_flight: asyncio.Task | None = None

    @property
    def busy(self) -> bool:
        """Something pending or in flight."""
        return bool(self.pending.events) or self.flying

    @property
    def flying(self) -> bool:
        return self.in_flight is not None and not self.in_flight.done()

    def is_due(self) -> bool:
        """The pending batch is full, or old enough to go whatever its size."""
        pending = self.pending
        return bool(pending.events) and (pending.row_count >= self.settings.sink_batch_size
                                         or time.monotonic() - pending.started >= self.settings.sink_batch_seconds)

    async def flush_if_due(self) -> None:
        """Cut and flush the pending batch when it is due, after the one in flight (backpressure)."""
        if self.is_due():
            await self.wait_in_flight()
            self.cut_and_flush()

    async def wait_in_flight(self) -> None:
        while self.flying:
            await self.in_flight

    def cut_and_flush(self) -> None:
        """Cut the pending batch, its state changes snapshotted now (`steps.cut`), and make it durable."""
        if not self.pending.events:  # the ticker cut it while this waited
            return
        batch, self.pending = self.pending, PendingBatch()
        self.in_flight = asyncio.ensure_future(self._make_durable_and_commit(cut(batch, self.active_days)))

    async def _make_durable_and_commit(self, write: DurableWrite) -> None:
        try:
            await self.durable.make_durable(write)
        except Exception as exc:
            # The partition state already holds this batch, so carrying on would take its
            # redelivered events for duplicates. Stop the worker instead; a restart rebuilds the
            # state from what was made durable.
            log.critical("batch failed, stopping the worker: %r", exc)
            await self.app.crash(exc)
            raise
        await self.reader.commit(write.batch.offsets)

    async def drain(self) -> None:
        """Everything read made durable and committed, before Faust lets the partitions go (a
        rebalance, a stop): the step under way finishes, the pending batch is cut and flushed."""
        async with self.reader.stepping:
            try:
                await self.wait_in_flight()
                self.cut_and_flush()
                await self.wait_in_flight()
            except Exception as exc:  # the batch's failure has stopped the worker already
                log.warning("could not make the last batch durable before letting partitions go: %r", exc)
