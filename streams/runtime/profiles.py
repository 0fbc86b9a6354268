"""Who each user is (title, team, A/B flags), joined onto their events.

Profiles come from the compacted user-profiles topic, taken in order per partition. Each is
pseudonymised as events are, kept in the profiles table of the partition where that user's events
are taken (re-sent there if it arrived elsewhere), and copied to ClickHouse for the analysts."""
from __future__ import annotations

import asyncio
import logging
import time

from streams.contract import UserProfile
from streams.runtime.continuity import admit_in_order
from streams.runtime.kafka_internals import table_items, table_set
from streams.store.sink import PROFILE_COLUMNS, insert_isolating, to_columns

log = logging.getLogger(__name__)


class ProfileUpdates:
    def __init__(self, table, topic, order, guard, stages, scrubber, writer, retry) -> None:
        self.table, self.topic, self.order, self.guard = table, topic, order, guard
        self.stages, self.scrubber, self.writer, self.retry = stages, scrubber, writer, retry
        self._index: dict[str, dict] | None = None  # plain-dict view of the table

    def index(self) -> dict[str, dict]:
        """Profiles by stored user id as a plain dict: the table's store decodes JSON on every read,
        which the join would otherwise pay per event."""
        if self._index is None:
            self._index = dict(table_items(self.table))
        return self._index

    def forget_index(self) -> None:
        self._index = None

    async def take(self, stream) -> None:
        order = self.order
        async for events in stream.take_events(1000, within=0.5):
            await self.guard.learn_where_partitions_start(order, {event.message.partition for event in events})
            rows, sends = [], []
            for event in events:
                if not admit_in_order(order, event.message):
                    continue  # re-read in order after the hole: a profile is the user's latest
                profile = UserProfile()
                try:
                    profile.ParseFromString(event.message.value or b"")
                except Exception:
                    log.warning("undecodable profile at %s/%s", event.message.partition, event.message.offset)
                    continue
                if not profile.user:
                    continue
                _, expected_partition = self.stages.route(profile.user)
                self.scrubber.scrub_profile(profile)
                if expected_partition is not None and event.message.partition != expected_partition:
                    # joined where that user's events are
                    sends.append(await self.topic.send(key=profile.user.encode(), value=event.message.value,
                                                                partition=expected_partition))
                    continue
                value = {"email": profile.email, "title": profile.title, "team": profile.team,
                         "ab_flags": dict(profile.ab_flags)}
                sends.append(table_set(self.table, event.message.partition, profile.user, value))
                self.index()[profile.user] = value
                rows.append({"user": profile.user, "updated_at": profile.updated_epoch_ms or int(time.time() * 1000),
                             **value})
            token = f"profiles:{events[0].message.partition}@{events[0].message.offset}:{len(events)}" if events else ""
            refused = await insert_isolating(self.writer, "user_profiles", to_columns(rows, PROFILE_COLUMNS),
                                             PROFILE_COLUMNS, token, self.retry)
            for index, why in refused:  # the join has it still; only the analysts' copy lacks it
                log.error("ClickHouse refused the profile of %s: %s", rows[index]["user"], why)
            await asyncio.gather(*sends)
            await self.guard.keep_in_order(order)
