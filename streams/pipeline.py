"""The flow for one batch of one partition: validate -> enrich -> scrub -> join -> count.

No Kafka, no ClickHouse: raw messages in, rows / dead letters / state changes out. The Faust
wiring (`streams.app`) feeds it and turns its result into inserts, topic sends and table writes;
tests and benchmarks run it on plain lists.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from . import enrich, validate
from .active_users import MetricKey, PartitionActivity, day_ordinal
from .contract import DeadLetter, UserAction, is_envelope, partition_for_user
from .outcome import BatchCounts, Rejected, Source
from .validate import Limits

# Duplicates from producer retries arrive close together; older ones are still harmless (rows
# collapse by event_id in ClickHouse, active-user counts are sets), only counted as delivered.
RECENT_IDS_PER_GENERATION = 25_000


class RecentIds:
    """The event ids of a partition's recent events, in two generations of sets: remembers the last
    25k to 50k ids in bounded memory, at the cost of a set lookup or two per event."""

    def __init__(self, generation_size: int = RECENT_IDS_PER_GENERATION) -> None:
        self.generation_size = generation_size
        self.current: set[str] = set()
        self.previous: set[str] = set()

    def seen(self, event_id: str) -> bool:
        """True when event_id came before (within the window); remembers it otherwise."""
        if event_id in self.current or event_id in self.previous:
            return True
        self.current.add(event_id)
        if len(self.current) >= self.generation_size:
            self.previous, self.current = self.current, set()
        return False


@dataclass
class PartitionState:
    """What one input partition remembers between batches."""
    activity: PartitionActivity
    watermark_ms: int = 0  # newest event time seen in this partition
    recent_ids: RecentIds = field(default_factory=RecentIds)
    open_sessions: dict = field(default_factory=dict)

    def seen(self, event_id: str) -> bool:
        return self.recent_ids.seen(event_id)


@dataclass
class BatchResult:
    columns: enrich.Columns = field(default_factory=dict)  # the rows for `user_actions`, column by column
    dead_letters: list[DeadLetter] = field(default_factory=list)
    reroutes: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # (key, value, partition)
    metric_counts: dict[MetricKey, int] = field(default_factory=dict)          # this partition's changed counts
    newest_event_ms: dict[str, int] = field(default_factory=dict)              # per app
    counts: BatchCounts = field(default_factory=BatchCounts)

    @property
    def rows(self) -> list[dict]:
        return enrich.rows_of(self.columns)


def unpack(value: bytes | None, headers, source: Source, stages: "Stages", now_ms: int
           ) -> tuple[list[tuple[bytes | UserAction | None, Source]], DeadLetter | None]:
    """One Kafka message as the items `process_batch` takes: itself, or the actions of its envelope.
    An unreadable envelope becomes one dead letter."""
    if not is_envelope(headers):
        return [(value, source)], None
    try:
        return [(action, source) for action in validate.unpack_envelope(value, stages.limits)], None
    except Rejected as rejected:
        return [], dead_letter(rejected, value, source, None, stages.scrubber, now_ms)


@dataclass(frozen=True)
class Stages:
    """The configured stages: limits, property mapping, scrubber, input partition count."""
    limits: Limits
    mapping: enrich.PropertyMapping
    scrubber: object  # streams.scrub.Scrubber
    partitions: int


def dead_letter(rejected: Rejected, raw: bytes | UserAction | None, source: Source, action: UserAction | None,
                scrubber, now_ms: int) -> DeadLetter:
    """A dead letter that carries the scrubbed message, or only its size and hash when unparseable."""
    raw = raw.SerializeToString() if isinstance(raw, UserAction) else raw or b""
    letter = DeadLetter(reason=rejected.reason, detail=rejected.detail[:2000], source_topic=source.topic,
                        source_partition=source.partition, source_offset=source.offset,
                        received_epoch_ms=now_ms, payload_size=len(raw),
                        payload_sha256=hashlib.sha256(raw).hexdigest())
    if action is not None:
        letter.scrubbed_fields.extend(scrubber.scrub_action(action))
        letter.scrubbed_payload = action.SerializeToString()
        letter.event_id, letter.app, letter.user = action.event_id[:256], action.app[:256], action.user[:256]
    return letter


def process_batch(messages: list[tuple[bytes | UserAction | None, Source]], state: PartitionState, stages: Stages,
                  profiles, now_ms: int | None = None) -> BatchResult:
    """Run one partition's batch through every stage. Each message is raw bytes, or an action already
    unpacked from an envelope. `profiles` maps (scrubbed) user -> profile dict.

    Admission (validate, route, dedup) goes event by event, against the partition's watermark as
    each event moves it; the rows are then built, scrubbed and joined a column at a time."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    result = BatchResult()
    counts = result.counts
    limits, scrubber, partitions = stages.limits, stages.scrubber, stages.partitions
    seen = state.recent_ids.seen
    watermark = state.watermark_ms
    actions, sources, kwargs_list, pos_args_list = [], [], [], []
    for raw, source in messages:
        action = None
        try:
            action = validate.decode(raw, limits)
            validate.check(action, limits, watermark, now_ms)
            kwargs = validate.parse_json_field(action, "keyword_args_json", dict)
            pos_args = validate.parse_json_field(action, "pos_args_json", list)
        except Rejected as rejected:
            result.dead_letters.append(dead_letter(rejected, raw, source, action, scrubber, now_ms))
            counts.count_dead_letter(rejected.reason)
            continue
        # Counts are summed over partitions, so a user must live in exactly one of them: the one
        # its *stored* id hashes to (a replayed dead letter carries the pseudonym, not the email).
        stored_user = scrubber.scrub_user(action.user, action.app)
        expected_partition = partition_for_user(stored_user, partitions)
        if source.partition != expected_partition:
            value = action.SerializeToString() if isinstance(raw, UserAction) else raw
            result.reroutes.append((stored_user.encode(), value, expected_partition))
            counts.rerouted += 1
            continue
        if seen(action.event_id):
            counts.duplicates += 1
            continue
        actions.append(action)
        sources.append(source)
        kwargs_list.append(kwargs)
        pos_args_list.append(pos_args)
        start = action.start_epoch_ms
        if start > watermark:
            watermark = start
    state.watermark_ms = watermark
    counts.delivered += len(actions)

    columns = enrich.build_columns(actions, sources, kwargs_list, pos_args_list, stages.mapping, now_ms)
    scrubber.scrub_columns(columns)
    enrich.join_profiles(columns, profiles)
    enrich.assign_sessions(columns, state.open_sessions)
    result.columns = columns

    apps, starts = columns["app"], columns["ts"]
    newest = result.newest_event_ms
    for app, start in zip(apps, starts):
        if start > newest.get(app, 0):
            newest[app] = start
    activity = state.activity
    activity.add_batch(apps, columns["user"], list(map(day_ordinal, starts)))
    result.metric_counts = activity.take_dirty()  # before advance() forgets final days
    if state.watermark_ms:
        activity.advance(day_ordinal(state.watermark_ms))
    return result  # the caller persists the activity when it cuts a batch: state.activity.take_changed_buckets()
