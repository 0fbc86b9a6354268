"""The flow for one batch of one partition: validate -> enrich -> scrub -> join -> count.

No Kafka, no ClickHouse: raw messages in, rows / dead letters / state changes out. The Faust
wiring (`streams.runtime.app`) feeds it and turns its result into inserts, topic sends and table writes;
tests and benchmarks run it on plain lists.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import operator
import time
from dataclasses import dataclass, field

from streams.stages import enrich
from streams.stages import validate
from streams.stages.active_users import MetricKey, PartitionActivity, day_ordinal
from streams.contract import DeadLetter, UserAction, envelope_columns, is_envelope, partition_for_user
from streams.contract.envelope_columns import Decoded, DecodedEnvelope, LazyActions
from streams.stages.outcome import HISTORICAL, LATE, ON_TIME, REFUSED_BY_STORE, VERDICT_HEADER, BatchCounts, Rejected, Source
from streams.stages.scrub import is_pseudonym
from streams.stages.validate import Limits

# Duplicates from producer retries arrive close together; older ones are still harmless (rows
# collapse by event_id in ClickHouse, active-user counts are sets), only counted as delivered.
RECENT_IDS_PER_GENERATION = 25_000
ROUTES_CACHED = 200_000


class RecentIds:
    """The event ids of a partition's recent events, in two generations of sets: remembers the last
    25k to 50k ids in bounded memory, at the cost of a set lookup or two per event."""

    def __init__(self, generation_size: int = RECENT_IDS_PER_GENERATION) -> None:
        self.generation_size = generation_size
        self.current: set[str] = set()
        self.previous: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self.current or event_id in self.previous

    def remember(self, event_id: str) -> None:
        self.current.add(event_id)
        if len(self.current) >= self.generation_size:
            self.previous, self.current = self.current, set()

    def remember_all(self, event_ids: list[str]) -> None:
        """`remember` for each of some distinct ids, none of them remembered yet: a generation's
        room at a time."""
        taken = 0
        while taken < len(event_ids):
            room = self.generation_size - len(self.current)
            self.current.update(event_ids[taken:taken + room])
            taken += room
            if len(self.current) >= self.generation_size:
                self.previous, self.current = self.current, set()

    def forget(self, event_id: str) -> None:
        """An event taken but not stored after all (ClickHouse refused its row): its replay is new."""
        self.current.discard(event_id)
        self.previous.discard(event_id)


@dataclass
class PartitionState:
    """What one input partition remembers between batches."""
    activity: PartitionActivity
    watermark_ms: int = 0  # newest event time seen in this partition
    recent_ids: RecentIds = field(default_factory=RecentIds)
    open_sessions: dict = field(default_factory=dict)


@dataclass
class BatchResult:
    columns: enrich.Columns = field(default_factory=dict)  # the rows for `user_actions`, column by column
    dead_letters: list[DeadLetter] = field(default_factory=list)
    reroutes: list[tuple[bytes, bytes, int, list]] = field(default_factory=list)  # (key, value, partition, headers)
    metric_counts: dict[MetricKey, int] = field(default_factory=dict)          # this partition's changed counts
    corrections: set[tuple[str, int]] = field(default_factory=set)  # (app, day) the store must count again
    newest_event_ms: dict[str, int] = field(default_factory=dict)              # per app
    counts: BatchCounts = field(default_factory=BatchCounts)

    @property
    def rows(self) -> list[dict]:
        return enrich.rows_of(self.columns)


Item = tuple[bytes | UserAction | DecodedEnvelope | None, Source]  # what `process_batch` takes


def unpack(value: bytes | None, headers, source: Source, stages: "Stages", now_ms: int, as_columns: bool = False
           ) -> tuple[list[Item], DeadLetter | None]:
    """One Kafka message as the items `process_batch` takes: itself, or the actions of its envelope;
    with `as_columns`, an envelope the native decoder takes is one item, its actions as columns
    (`envelope_columns`). An unreadable envelope becomes one dead letter."""
    verdict = carried_verdict(headers)
    if verdict:
        source = source._replace(verdict=verdict)
    if not is_envelope(headers):
        return [(value, source)], None
    if as_columns and (decoded := envelope_columns.decode(value)) is not None:
        return [(decoded, source)], None
    try:
        return list(zip(validate.unpack_envelope(value, stages.limits), itertools.repeat(source))), None
    except Rejected as rejected:
        return [], dead_letter(rejected, value, source, None, stages.scrubber, now_ms)


def events_of(items: list[Item]) -> int:
    """How many events some items hold (a decoded envelope holds several)."""
    return sum(len(raw) if type(raw) is DecodedEnvelope else 1 for raw, _ in items)


def _as_actions(items: list[Item]) -> list[Item]:
    """The items with each decoded envelope's actions made into `UserAction`s, one item each."""
    found = []
    for raw, source in items:
        if type(raw) is DecodedEnvelope:
            found.extend(zip(raw.actions(), itertools.repeat(source)))
        else:
            found.append((raw, source))
    return found


def carried_verdict(headers) -> str:
    """The lateness verdict a re-routed copy carries from the partition that first read it."""
    for key, value in headers or ():
        if key == VERDICT_HEADER:
            return bytes(value).decode()
    return ""


@dataclass(frozen=True)
class Stages:
    """The configured stages: limits, property mapping, scrubber, input partition count."""
    limits: Limits
    mapping: enrich.PropertyMapping
    scrubber: object  # streams.stages.scrub.Scrubber
    partitions: int
    _routes: dict = field(default_factory=dict, compare=False, repr=False)

    def route(self, user: str) -> tuple[str, int | None]:
        """(stored user id, the input partition it belongs to) for a user id as sent; cached.

        A user's partition is the one Kafka's default partitioner gives the id as sent (what a
        producer following the README keys by), so such a producer's events need no hop; the
        pseudonym is made after. An id that is a pseudonym already (the SDK with the HMAC key, a
        replayed dead letter) belongs where it arrives (None): whoever made it sent it to the
        partition of the person's own id."""
        found = self._routes.get(user)
        if found is None:
            stored = self.scrubber.scrub_user(user)
            found = (stored, None if is_pseudonym(user) else partition_for_user(user, self.partitions))
            if len(self._routes) >= ROUTES_CACHED:
                self._routes.clear()
            self._routes[user] = found
        return found

    def partitions_of(self, users: set[str]) -> set[int | None]:
        """The partitions (`route`) some users belong to; read off the cache in C when all are in it."""
        routes = self._routes
        if users <= routes.keys():
            return set(map(_partition_of_route, map(routes.__getitem__, users)))
        return {self.route(user)[1] for user in users}


_partition_of_route = operator.itemgetter(1)


def dead_letter(rejected: Rejected, raw: bytes | UserAction | None, source: Source, action: UserAction | None,
                scrubber, now_ms: int, partitions: int = 0) -> DeadLetter:
    """A dead letter that carries the scrubbed message, or only its size and hash when unparseable."""
    raw = raw.SerializeToString() if isinstance(raw, UserAction) else raw or b""
    letter = DeadLetter(reason=rejected.reason, detail=rejected.detail[:2000], source_topic=source.topic,
                        source_partition=source.partition, source_offset=source.offset,
                        received_epoch_ms=now_ms, payload_size=len(raw),
                        payload_sha256=hashlib.sha256(raw).hexdigest())
    if action is not None:
        if action.user:  # where the user's events are, for a replay of this scrubbed copy
            letter.user_partition = (partition_for_user(action.user, partitions)
                                     if partitions and not is_pseudonym(action.user) else source.partition)
        letter.scrubbed_fields.extend(scrubber.scrub_action(action))
        letter.scrubbed_payload = action.SerializeToString()
        letter.event_id, letter.app, letter.user = action.event_id[:256], action.app[:256], action.user[:256]
    return letter


def refused_row_letter(row: dict, detail: str, topic: str, now_ms: int) -> DeadLetter:
    """The dead letter of a row ClickHouse refused: it carries the scrubbed action rebuilt from the
    row, so `tally dlq replay` can send it again once the store takes it."""
    payload = enrich.action_of_row(row).SerializeToString()
    return DeadLetter(reason=REFUSED_BY_STORE, detail=f"ClickHouse refused the row: {detail}"[:2000],
                      source_topic=topic, source_partition=row["kafka_partition"], source_offset=row["kafka_offset"],
                      received_epoch_ms=now_ms, payload_size=len(payload),
                      payload_sha256=hashlib.sha256(payload).hexdigest(), scrubbed_payload=payload,
                      event_id=row["event_id"][:256], app=row["app"][:256], user=row["user"][:256],
                      scrubbed_fields=row["scrubbed_fields"], user_partition=row["kafka_partition"])


def process_batch(messages: list[Item], state: PartitionState, stages: Stages,
                  profiles, now_ms: int | None = None) -> BatchResult:
    """Run one partition's batch through every stage. Each message is raw bytes, an action already
    unpacked from an envelope, or an envelope decoded as columns (`unpack`). `profiles` maps (scrubbed) user -> profile dict.

    Admission (validate, route, dedup) judges each event against the partition's watermark as each
    event moves it (a clean batch in a few passes over its columns, any other event by event); the
    rows are then built, scrubbed and joined a column at a time."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    result = BatchResult()
    admitted = admit(messages, state, stages, result, now_ms)
    columns = enrich.build_columns(admitted.fields, admitted.actions, admitted.sources, admitted.kwargs,
                                   admitted.pos_args, stages.mapping, now_ms)
    stages.scrubber.scrub_columns(columns)
    enrich.join_profiles(columns, profiles)
    enrich.assign_sessions(columns, state.open_sessions)
    result.columns = columns
    count_activity(columns, state, stages.limits, result)
    return result  # the caller persists the activity when it cuts a batch: state.activity.take_changed_buckets()


@dataclass
class Admitted:
    """The actions of a batch that go on to become rows, with what admission read off them."""
    actions: list[UserAction]
    sources: list[Source]
    fields: dict[str, list]  # their wire fields, as columns (validate.read_fields)
    kwargs: list[dict]
    pos_args: list[list]


def admit(messages: list[Item], state: PartitionState, stages: Stages,
          result: BatchResult, now_ms: int, at_once: bool = True) -> Admitted:
    """Validate, route and deduplicate a batch, in order; every message that does not go on ends in
    `result` (a dead letter, a reroute or a duplicate). Moves the partition's watermark. A clean
    batch is judged at once (`admit_clean`), unless `at_once` is False; any other event by event."""
    counts = result.counts
    limits, scrubber = stages.limits, stages.scrubber
    raws, sources = list(map(_raw_of, messages)), list(map(_source_of, messages))
    types = set(map(type, raws))
    as_columns = _decoded(raws, sources, types, limits)
    if as_columns is not None:
        return _admit_decoded(*as_columns, state, stages, result, now_ms, at_once)
    if DecodedEnvelope in types:  # mixed with other items: every action as a message
        messages = _as_actions(messages)
        raws, sources = list(map(_raw_of, messages)), list(map(_source_of, messages))
        types = set(map(type, raws))
    if types == {UserAction}:  # all out of envelopes: parsed already
        actions = raws
        # the size of the envelope an action came in when that is small enough, else its own
        sizes = list(map(_size_of, sources))
        if not (0 < min(sizes) and max(sizes) <= limits.max_field_bytes):
            sizes = [size if 0 < size <= limits.max_field_bytes else action.ByteSize()
                     for action, size in zip(actions, sizes)]
    elif (decoded_all := validate.decode_all(raws, limits)) is not None:  # single messages, all readable
        actions, sizes = decoded_all, list(map(len, raws))
    else:
        decoded: list[tuple[UserAction, bytes | UserAction | None, Source]] = []
        for raw, source in messages:
            if type(raw) is UserAction:
                decoded.append((raw, raw, source))
                continue
            try:
                decoded.append((validate.decode(raw, limits), raw, source))
            except Rejected as rejected:
                letter = dead_letter(rejected, raw, source, None, scrubber, now_ms, stages.partitions)
                result.dead_letters.append(letter)
                counts.count_dead_letter(rejected.reason)
        actions, raws, sources = (list(column) for column in zip(*decoded)) if decoded else ([], [], [])
        sizes = [len(raw) if raw is not action else
                 source.size if 0 < source.size <= limits.max_field_bytes else action.ByteSize()
                 for action, raw, source in decoded]
    fields = validate.read_fields(actions)
    suspects = validate.suspects(fields, sizes, limits, now_ms)
    if at_once and not suspects:
        clean = admit_clean(actions, sources, fields, state, stages, counts)
        if clean is not None:
            return clean
    return admit_each(list(zip(actions, raws, sources)), fields, sizes, suspects, state, stages, result, now_ms)


def _decoded(raws: list, sources: list[Source], types: set[type], limits: Limits
             ) -> tuple[list[Decoded], list, list[Source]] | None:
    """The batch decoded natively, as columns, with each row's raw message and source: its decoded
    envelopes, or its single messages in one call; None when it is neither, or the decoder does not
    take one of them (then upb decodes them)."""
    if types == {DecodedEnvelope}:
        sources = list(itertools.chain.from_iterable(map(itertools.repeat, sources, map(len, raws))))
        return raws, None, sources  # an action out of an envelope is its own raw message
    if types == {bytes} and max(map(len, raws)) <= limits.max_message_bytes:
        messages = envelope_columns.decode_messages(raws)
        return None if messages is None else ([messages], raws, sources)
    return None


def _admit_decoded(parts: list[Decoded], raws: list | None, sources: list[Source], state: PartitionState,
                   stages: Stages, result: BatchResult, now_ms: int, at_once: bool) -> Admitted:
    """`admit` of a batch decoded as columns: a row's action is parsed only when something asks."""
    if len(parts) == 1:
        fields, sizes = {**parts[0].fields, "properties": parts[0].properties}, parts[0].sizes
    else:
        fields = {name: list(itertools.chain.from_iterable(part.fields[name] for part in parts))
                  for name in envelope_columns.FIELDS}
        fields["properties"] = list(itertools.chain.from_iterable(map(_properties_of, parts)))
        sizes = list(itertools.chain.from_iterable(map(_sizes_of, parts)))
    actions = LazyActions(parts)
    suspects = validate.suspects(fields, sizes, stages.limits, now_ms)
    if at_once and not suspects:
        clean = admit_clean(actions, sources, fields, state, stages, result.counts)
        if clean is not None:
            return clean
    actions = list(actions)
    return admit_each(list(zip(actions, raws or actions, sources)), fields, sizes, suspects, state, stages, result,
                      now_ms)


def admit_clean(actions: list[UserAction], sources: list[Source], fields: dict[str, list], state: PartitionState,
                stages: Stages, counts: BatchCounts) -> Admitted | None:
    """The common batch, judged at once: every event valid and new, of users of the partition it came
    in, its arguments readable JSON, with no verdict carried. The same outcome as `admit_each`, in a
    few passes over columns; None when the batch is not such a one (then `admit_each` judges it)."""
    partitions = set(map(_partition_of, sources))
    if len(partitions) != 1 or set(map(_verdict_of, sources)) != {""}:
        return None
    partition = partitions.pop()
    if not stages.partitions_of(set(fields["user"])) <= {None, partition}:
        return None
    event_ids, recent = fields["event_id"], state.recent_ids
    if len(set(event_ids)) != len(event_ids) or not (recent.current.isdisjoint(event_ids)
                                                     and recent.previous.isdisjoint(event_ids)):
        return None
    try:
        kwargs = validate.parse_json_column(fields["keyword_args_json"], "keyword_args_json", dict)
        pos_args = validate.parse_json_column(fields["pos_args_json"], "pos_args_json", list)
    except Rejected:
        return None
    # each event against the partition's newest event before it, as `admit_each` moves the watermark
    starts, lateness = fields["start_epoch_ms"], stages.limits.allowed_lateness_ms
    watermarks = list(itertools.accumulate(starts, max, initial=state.watermark_ms))
    if any(map(operator.lt, starts, watermarks)):
        for start, watermark in zip(starts, watermarks):
            if start < watermark:
                counts.count_lateness(LATE if start >= watermark - lateness else HISTORICAL)
    state.watermark_ms = watermarks[-1]
    recent.remember_all(event_ids)
    counts.delivered += len(event_ids)
    return Admitted(actions, sources, fields, kwargs, pos_args)


_partition_of = operator.attrgetter("partition")
_verdict_of = operator.attrgetter("verdict")
_size_of = operator.attrgetter("size")
_raw_of, _source_of = operator.itemgetter(0), operator.itemgetter(1)
_properties_of, _sizes_of = operator.attrgetter("properties"), operator.attrgetter("sizes")


def admit_each(decoded: list[tuple[UserAction, bytes | UserAction | None, Source]], fields: dict[str, list],
               sizes: list[int], suspects: set[int], state: PartitionState, stages: Stages, result: BatchResult,
               now_ms: int) -> Admitted:
    """Admission event by event, in order: any batch, whatever is wrong with it."""
    counts, limits, scrubber = result.counts, stages.limits, stages.scrubber
    recent = state.recent_ids
    remember = recent.remember
    route = stages.route
    watermark = state.watermark_ms
    lateness = limits.allowed_lateness_ms
    kept, kwargs_list, pos_args_list = [], [], []
    for index, (action, raw, source), start, user, event_id, kwargs_text, pos_args_text in zip(
            itertools.count(), decoded, fields["start_epoch_ms"], fields["user"], fields["event_id"],
            fields["keyword_args_json"], fields["pos_args_json"]):
        # A copy of an event taken already (a producer retry, or a re-read after a rebalance or a
        # hole) is a duplicate before anything else.
        if event_id in recent:
            counts.duplicates += 1
            continue
        try:
            if index in suspects:
                validate.check(action, limits, now_ms, sizes[index])
            kwargs = validate.parse_json(kwargs_text, "keyword_args_json", dict)
            pos_args = validate.parse_json(pos_args_text, "pos_args_json", list)
        except Rejected as rejected:
            result.dead_letters.append(dead_letter(rejected, raw, source, action, scrubber, now_ms, stages.partitions))
            counts.count_dead_letter(rejected.reason)
            continue
        # Lateness never decides whether an event is kept, only how it is counted: on time, late
        # (behind the partition's newest event, within the allowed lateness: the live state takes
        # it), or historical (further behind: stored, and its days recounted from the store). A
        # re-routed copy keeps the verdict of the partition that first read it.
        verdict = source.verdict or (ON_TIME if not watermark or start >= watermark else
                                     LATE if start >= watermark - lateness else HISTORICAL)
        # Counts are summed over partitions, so a user must live in exactly one of them.
        stored_user, expected_partition = route(user)
        if expected_partition is not None and source.partition != expected_partition:
            value = action.SerializeToString() if raw is action else raw
            result.reroutes.append((user.encode("utf-8", "surrogatepass"), value, expected_partition,
                                    [(VERDICT_HEADER, verdict.encode())]))
            counts.rerouted += 1
            continue
        if verdict != ON_TIME:
            counts.count_lateness(verdict)
        remember(event_id)
        kept.append(index)
        kwargs_list.append(kwargs)
        pos_args_list.append(pos_args)
        if start > watermark:
            watermark = start
    state.watermark_ms = watermark
    counts.delivered += len(kept)

    if len(kept) < len(decoded):
        fields = {name: [column[index] for index in kept] for name, column in fields.items()}
        decoded = [decoded[index] for index in kept]
    return Admitted([action for action, _, _ in decoded], [source for _, _, source in decoded], fields,
                    kwargs_list, pos_args_list)


def count_activity(columns: enrich.Columns, state: PartitionState, limits: Limits, result: BatchResult) -> None:
    """The rows' active days into the partition's counts (the changed ones into `result`); then,
    when the watermark has reached a new day, forget what can no longer change."""
    apps, starts = columns["app"], columns["ts"]
    newest = result.newest_event_ms
    if not newest and all(map(operator.le, starts, itertools.islice(starts, 1, None))):
        newest.update(zip(apps, starts))  # in time order: each app's last event is its newest
    else:
        for app, start in zip(apps, starts):
            if start > newest.get(app, 0):
                newest[app] = start
    activity = state.activity
    activity.add_batch(apps, columns["user"], list(map(dt.date.toordinal, columns["ds"])))  # ds: the UTC day of ts
    result.metric_counts = activity.take_dirty()  # before advance() forgets final days
    result.corrections = activity.take_corrections()
    if state.watermark_ms and day_ordinal(state.watermark_ms) > activity.watermark_day:
        enrich.close_sessions(state.open_sessions, state.watermark_ms - limits.allowed_lateness_ms - enrich.SESSION_GAP_MS)
        activity.advance(day_ordinal(state.watermark_ms))
