"""Partition ownership: the state of each input partition this worker owns, rebuilt when it takes a
partition on (active days and watermark from the recovered table, open sessions from the store)
and dropped when the partition is revoked."""
from __future__ import annotations

import asyncio
import logging

from streams.runtime.kafka_internals import table_items
from streams.stages.active_users import PartitionActivity, day_ordinal
from streams.stages.enrich import SESSION_GAP_MS
from streams.stages.flow import PartitionState

log = logging.getLogger(__name__)

WATERMARK_KEY = "~watermark"


class PartitionOwnership:
    """Input partition -> its `PartitionState`, for the partitions this worker owns now."""

    def __init__(self, active_days, writer, lateness_days: int, allowed_lateness_ms: int) -> None:
        self.active_days = active_days  # the Faust table: "<partition>|<bucket>" -> day lists, and watermarks
        self.writer = writer            # reads back open sessions from the store
        self.lateness_days = lateness_days
        self.allowed_lateness_ms = allowed_lateness_ms
        self.states: dict[int, PartitionState] = {}
        self.revocations = 0  # rebalances that took partitions away, so far

    def state_for(self, partition: int) -> PartitionState:
        """This partition's state, rebuilt the first time (`take_on` does that before a step,
        reading ClickHouse off the event loop; this is for a partition it could not)."""
        state = self.states.get(partition)
        if state is None:
            state = self.recovered_state(partition)
            if state.watermark_ms:
                state.open_sessions = self.stored_open_sessions(partition, state.watermark_ms)
            self.states[partition] = state
        return state

    async def take_on(self, partitions: set[int]) -> None:
        """State for each input partition first seen since its assignment, before its first step:
        the sessions its previous owner left open are read back in a thread, since the read waits
        for any insert in flight."""
        for partition in partitions - self.states.keys():
            state = self.recovered_state(partition)
            if state.watermark_ms:
                revocations = self.revocations
                sessions = await asyncio.get_running_loop().run_in_executor(
                    None, self.stored_open_sessions, partition, state.watermark_ms)
                if revocations != self.revocations or partition in self.states:
                    continue  # a rebalance meanwhile: what was read may be another owner's
                state.open_sessions = sessions
            self.states[partition] = state

    def revoke(self, partition: int) -> None:
        self.states.pop(partition, None)

    def recovered_state(self, partition: int) -> PartitionState:
        """A partition's active days and watermark from the recovered active_days table."""
        state = PartitionState(PartitionActivity(self.lateness_days))
        prefix = f"{partition}|"
        persisted = []
        for key, value in table_items(self.active_days):
            if not key.startswith(prefix):
                continue
            if key == prefix + WATERMARK_KEY:
                state.watermark_ms = int(value)
            else:
                persisted.extend(value)  # [app, user, days] of each user in the bucket
        state.activity.restore(persisted, day_ordinal(state.watermark_ms) if state.watermark_ms else 0)
        return state

    def stored_open_sessions(self, partition: int, watermark_ms: int) -> dict[str, tuple[str, int, int]]:
        """The sessions a partition's previous owner left open, read back from its stored rows (once,
        when the partition is taken on). Without them a restart would split sessions in two."""
        since = watermark_ms - self.allowed_lateness_ms - SESSION_GAP_MS
        try:
            return self.writer.open_sessions(partition, since)
        except Exception as exc:  # sessions then restart here; nothing else depends on them
            log.warning("could not read the open sessions of input partition %d: %r", partition, exc)
            return {}
