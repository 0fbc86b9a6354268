"""A cut batch made durable: its rows and dead letters into ClickHouse, its re-routed events,
letters and partition counts sent, every send acknowledged by the broker; then the windows the live
state had closed recounted from the store. Only after this is anything counted or committed."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from streams.contract import DeadLetter
from streams.runtime.batching import DurableWrite, PendingBatch
from streams.stages.active_users import closed_windows, day_ordinal
from streams.stages.flow import refused_row_letter
from streams.stages.outcome import REFUSED_BY_STORE
from streams.store.sink import (DEAD_LETTER_COLUMNS, USER_ACTION_COLUMNS, batch_token, dead_letter_row,
                                insert_isolating, to_columns, write_with_retry)

log = logging.getLogger(__name__)


class DurableWrites:
    def __init__(self, settings, writer, retry, counts, consumed_offsets: dict[int, int],
                 actions_topic, dlq_topic, partials_topic) -> None:
        self.settings, self.writer, self.retry = settings, writer, retry
        self.counts, self.consumed_offsets = counts, consumed_offsets  # the pipeline's: what /stats/ reports
        self.actions_topic, self.dlq_topic, self.partials_topic = actions_topic, dlq_topic, partials_topic

    async def make_durable(self, write: DurableWrite) -> None:
        """The I/O part: rows and dead letters into ClickHouse, then every message out and acknowledged
        by the broker."""
        batch, sends = write.batch, write.sends
        for key, value, target, headers in batch.reroutes:
            sends.append(await self.actions_topic.send(key=key, value=value, partition=target, headers=headers))
        token = batch_token(self.settings.topics.user_actions, batch.offsets)
        refused = await insert_isolating(self.writer, "user_actions", batch.columns, USER_ACTION_COLUMNS, token,
                                         self.retry)
        letters = batch.letters + self._refused_rows_as_letters(batch, refused) if refused else batch.letters
        if letters:
            letter_rows = [dead_letter_row(letter) for letter in letters]
            kept_out = await insert_isolating(self.writer, "dead_letters", to_columns(letter_rows, DEAD_LETTER_COLUMNS),
                                              DEAD_LETTER_COLUMNS, token, self.retry)
            for index, why in kept_out:
                log.error("ClickHouse refused the dead letter of %s/%d/%d (%s); it is in the %s topic only: %s",
                          letters[index].source_topic, letters[index].source_partition, letters[index].source_offset,
                          letters[index].reason, self.settings.topics.dead_letters, why)
            for letter in letters:
                sends.append(await self.dlq_topic.send(key=letter.reason.encode(), value=letter.SerializeToString()))
        if write.partial["partitions"]:
            sends.append(await self.partials_topic.send(key=b"counts", value=json.dumps(write.partial).encode()))
        await asyncio.gather(*sends)
        if batch.corrections:
            await self._correct_from_store(batch)
        self.counts.add(batch.counts)  # counted once stored and sent: what /stats reports is durable
        for partition, (_, high) in batch.offsets.items():
            self.consumed_offsets[partition] = high

    async def _correct_from_store(self, batch: PendingBatch) -> None:
        """Historical events fell into windows the live state has closed: recount those windows for
        their partition from the store of record (its rows are in now), and send the counts as that
        partition's, flagged as corrections. A partition's counts only grow, so the totals take them
        whatever order they come in."""
        counts = []
        for partition, app_days in batch.corrections.items():
            state = batch.states[partition]
            horizon = state.activity.watermark_day - self.settings.allowed_lateness_days
            keys = closed_windows(app_days, horizon, day_ordinal(state.watermark_ms))
            if not keys:
                continue
            found: dict = {}
            await write_with_retry(lambda: found.update(self.writer.partition_counts(partition, keys)), self.retry,
                                   f"recounting closed windows of input partition {partition}")
            counts.extend([partition, metric, app, day, count] for (metric, app, day), count in found.items())
        if counts:
            partial = {"partitions": {}, "counts": counts, "correction": True}
            await (await self.partials_topic.send(key=b"counts", value=json.dumps(partial).encode()))

    def _refused_rows_as_letters(self, batch: PendingBatch, refused: list[tuple[int, str]]) -> list[DeadLetter]:
        """Rows ClickHouse refused become dead letters instead: counted as such, and forgotten as
        taken, so their replay is stored rather than taken for a duplicate."""
        columns, now_ms = batch.columns, int(time.time() * 1000)
        letters = []
        for index, why in refused:
            row = {name: values[index] for name, values in columns.items()}
            letters.append(refused_row_letter(row, why, self.settings.topics.user_actions, now_ms))
            batch.states[row["kafka_partition"]].recent_ids.forget(row["event_id"])
            batch.counts.delivered -= 1
            batch.counts.count_dead_letter(REFUSED_BY_STORE)
        log.error("ClickHouse refused %d of %d rows (first: %s); they are dead letters (%s), the rest is stored",
                  len(refused), batch.row_count, refused[0][1], REFUSED_BY_STORE)
        return letters
