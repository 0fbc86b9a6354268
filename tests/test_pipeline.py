"""One partition's batch through every stage, in memory: what the worker does between Kafka and
ClickHouse, without either."""
import itertools
import json

import pytest
from hypothesis import given, settings, strategies as st

from streams.stages.active_users import PartitionActivity
from streams.contract import DeadLetter, UserAction
from streams.stages.enrich import load_mapping
from streams.stages.outcome import Source
from streams.stages import flow
from streams.stages.flow import PartitionState, RecentIds, Stages, partition_for_user, process_batch
from streams.stages.scrub import Scrubber, load_policy
from streams.stages.validate import DAY_MS, Limits

NOW = 1_764_000_000_000
PARTITIONS = 4
SCRUBBER = Scrubber(load_policy(hmac_key="test-key"))
STAGES = Stages(Limits(), load_mapping(), SCRUBBER, PARTITIONS)


def users_in(partition: int, count: int) -> list[str]:
    """User ids that land in `partition` (keyed as sent, as Kafka's default partitioner does)."""
    found, i = [], 0
    while len(found) < count:
        user = f"user-{i}"
        if partition_for_user(user, PARTITIONS) == partition:
            found.append(user)
        i += 1
    return found


def action(event_id: str, user: str, start: int, **fields) -> bytes:
    values = dict(event_id=event_id, app="amundsen", user=user, command="_get_table_metadata", schema_version=1,
                  start_epoch_ms=start, end_epoch_ms=start + 40,
                  keyword_args_json=json.dumps({"table_key": "hive://gold.orders", "index": "1",
                                                "source": "search_results"}))
    return UserAction(**{**values, **fields}).SerializeToString()


def run(messages: list[bytes], state: PartitionState | None = None, partition: int = 0):
    state = state or PartitionState(PartitionActivity(lateness_days=3))
    batch = [(raw, Source("user-actions", partition, offset)) for offset, raw in enumerate(messages)]
    return process_batch(batch, state, STAGES, {}, now_ms=NOW), state


def test_every_message_ends_in_exactly_one_outcome():
    ann, bob = users_in(0, 2)
    elsewhere = users_in(1, 1)[0]
    messages = [action("e1", ann, NOW - 5000), action("e2", bob, NOW - 4000),
                action("e1", ann, NOW - 5000),                                   # a duplicate send
                b"\x08garbage",                                                  # undecodable
                action("e3", ann, NOW - 3000, keyword_args_json='{"password": "hunter2", "x": "'),  # bad JSON
                action("e4", elsewhere, NOW - 2000)]                             # keyed to the wrong partition
    result, _ = run(messages)
    counts = result.counts
    assert (counts.delivered, counts.duplicates, counts.dead_lettered, counts.rerouted) == (2, 1, 2, 1)
    assert counts.consumed == len(messages)
    assert counts.dead_letters_by_reason == {"undecodable": 1, "invalid_json": 1}
    assert [r["event_id"] for r in result.rows] == ["e1", "e2"]
    key, value, target, headers = result.reroutes[0]
    assert (key, target, value) == (elsewhere.encode(), 1, messages[5])


def test_dead_letters_never_carry_the_secret():
    result, _ = run([action("e3", "ann", NOW, keyword_args_json='{"password": "hunter2", "x": "')])
    letter: DeadLetter = result.dead_letters[0]
    assert letter.reason == "invalid_json" and letter.source_offset == 0
    assert b"hunter2" not in letter.SerializeToString()
    assert letter.scrubbed_payload and len(letter.payload_sha256) == 64


def test_rows_are_enriched_scrubbed_and_counted():
    (ann,) = users_in(0, 1)
    email_user = next(u for u in (f"p{i}@example.com" for i in range(500))
                      if partition_for_user(u, PARTITIONS) == 0)
    result, state = run([action("e1", ann, NOW - 1000), action("e2", email_user, NOW - 500)])
    first, second = result.rows
    assert (first["event_name"], first["resource_key"], first["result_index"], first["source"], first["target_type"]) \
        == ("Get Table Metadata", "hive://gold.orders", 1, "search_results", "table")
    assert second["user"].startswith("u_") and "user:hmac:email" in second["scrubbed_fields"]
    assert result.metric_counts[("dau", "amundsen", NOW // DAY_MS + 719163)] == 2
    persisted = {(app, user): days for users in state.activity.take_changed_buckets().values() for app, user, days in users}
    assert set(persisted) == {("amundsen", ann), ("*", ann), ("amundsen", second["user"]), ("*", second["user"])}


def test_a_user_gaining_no_new_day_writes_no_state():
    (ann,) = users_in(0, 1)
    result, state = run([action("e1", ann, NOW - 1000)])
    assert state.activity.take_changed_buckets()
    again, _ = run([action("e2", ann, NOW - 500)], state)
    assert state.activity.take_changed_buckets() == {} and again.metric_counts == {}


@pytest.mark.parametrize("start,late,historical", [(NOW, 0, 0), (NOW - 2 * DAY_MS, 1, 0), (NOW - 4 * DAY_MS, 0, 1),
                                                  (NOW - 90 * DAY_MS, 0, 1)])
def test_lateness_says_how_an_event_is_counted_never_whether_it_is_kept(start, late, historical):
    """Judged against the partition's own progress: late within the allowed lateness, historical
    beyond it (the live state leaves its closed windows to a recount from the store)."""
    (ann,) = users_in(0, 1)
    _, state = run([action("e1", ann, NOW)])
    result, _ = run([action("late", ann, start)], state)
    assert result.dead_letters == [] and [r["event_id"] for r in result.rows] == ["late"]
    assert (result.counts.delivered, result.counts.late, result.counts.historical) == (1, late, historical)
    assert bool(result.corrections) == bool(historical)


def test_a_rerouted_copy_keeps_the_verdict_of_its_first_reading():
    (ann,) = users_in(0, 1)
    (bob,) = users_in(1, 1)
    _, state = run([action("e1", ann, NOW)])
    first, _ = run([action("bob-old", bob, NOW - 10 * DAY_MS)], state)  # read in ann's partition: historical
    key, value, target, headers = first.reroutes[0]
    assert (key, target, headers) == (bob.encode(), 1, [("tally-verdict", b"historical")])
    fresh = PartitionState(PartitionActivity(lateness_days=3))  # bob's own partition, nothing read yet
    from streams.stages.flow import unpack
    items, _ = unpack(value, headers, Source("user-actions", 1, 0), STAGES, NOW)
    result = process_batch(items, fresh, STAGES, {}, now_ms=NOW)
    assert (result.counts.delivered, result.counts.historical) == (1, 1)


def test_the_same_input_gives_the_same_output():
    users = users_in(0, 3)
    messages = [action(f"e{i}", users[i % 3], NOW - 10_000 + i) for i in range(30)]
    first, _ = run(messages)
    second, _ = run(messages)
    assert first.rows == second.rows and first.metric_counts == second.metric_counts


def test_envelopes_unpack_into_their_actions_and_a_bad_one_is_one_dead_letter():
    from streams.contract import ENVELOPE_HEADER, UserActionBatch
    from streams.stages.flow import unpack
    source = Source("user-actions", 0, 7)
    actions = [UserAction.FromString(action(f"e{i}", "ann", NOW - i)) for i in range(3)]
    envelope = UserActionBatch(actions=actions).SerializeToString()
    items, letter = unpack(envelope, [ENVELOPE_HEADER], source, STAGES, NOW)
    assert [a.event_id for a, _ in items] == ["e0", "e1", "e2"] and letter is None
    single = action("e9", "ann", NOW)
    assert unpack(single, [], source, STAGES, NOW) == ([(single, source)], None)
    items, letter = unpack(b"\xff\xff", [ENVELOPE_HEADER], source, STAGES, NOW)
    assert items == [] and (letter.reason, letter.source_offset, letter.payload_size) == ("undecodable", 7, 2)
    # actions from an envelope go through the stages like single messages
    (ann,) = users_in(0, 1)
    unpacked, _ = unpack(UserActionBatch(actions=[UserAction.FromString(action("x1", ann, NOW))]).SerializeToString(),
                         [ENVELOPE_HEADER], source, STAGES, NOW)
    result = process_batch(unpacked, PartitionState(PartitionActivity(3)), STAGES, {}, now_ms=NOW)
    assert [r["event_id"] for r in result.rows] == ["x1"]


def test_events_read_again_after_the_stream_moved_on_are_duplicates_and_new_old_ones_are_kept():
    """A re-read (after a rebalance, or of a hole Faust skipped) can come days of event time after
    its first reading: each copy is a duplicate, and the one stored row is all there is of it."""
    (ann,) = users_in(0, 1)
    old = [action(f"e{i}", ann, NOW - 10 * DAY_MS + i) for i in range(3)]
    result, state = run(old + [action("e9", ann, NOW)])
    assert (result.counts.delivered, result.counts.dead_lettered) == (4, 0)
    again, _ = run(old + [action("e10", ann, NOW - 10 * DAY_MS)], state)  # e10 is new, and historical
    assert (again.counts.duplicates, again.counts.delivered, again.counts.historical) == (3, 1, 1)
    assert again.dead_letters == [] and [r["event_id"] for r in again.rows] == ["e10"]


@pytest.mark.parametrize("order", ["in time order", "out of order"])
def test_each_app_reports_its_newest_event_of_a_batch(order):
    """The alerts' clock moves with each app's newest event time, however the batch is ordered."""
    ann, bob = users_in(0, 2)
    events = [("amundsen", ann, NOW - 9000), ("bi", bob, NOW - 8000), ("amundsen", bob, NOW - 7000),
              ("bi", ann, NOW - 6000), ("amundsen", ann, NOW - 5000)]
    if order == "out of order":
        events = events[::-1]
    result, _ = run([action(f"e{n}", user, start, app=app) for n, (app, user, start) in enumerate(events)])
    assert result.newest_event_ms == {"amundsen": NOW - 5000, "bi": NOW - 6000}


def test_recent_ids_remember_a_bounded_window():
    recent = RecentIds(generation_size=100)
    for i in range(250):
        recent.remember(f"e{i}")
    assert all(f"e{i}" in recent for i in range(150, 250))  # at least the last generation_size ids
    assert "e0" not in recent  # long gone: memory stays bounded
    assert len(recent.current) + len(recent.previous) <= 200
    recent.forget("e249")
    recent.forget("e160")  # in either generation
    assert "e249" not in recent and "e160" not in recent and "e161" in recent


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(0, 120), max_size=6))
def test_recent_ids_remembered_at_once_are_remembered_one_by_one(generation, batch_sizes):
    at_once, one_by_one = RecentIds(generation_size=generation), RecentIds(generation_size=generation)
    ids = (f"e{n}" for n in itertools.count())
    for size in batch_sizes:
        batch = list(itertools.islice(ids, size))
        at_once.remember_all(batch)
        for event_id in batch:
            one_by_one.remember(event_id)
        assert (at_once.current, at_once.previous) == (one_by_one.current, one_by_one.previous)


def test_a_row_refused_by_the_store_is_a_dead_letter_whose_replay_gives_the_row_again():
    from streams.stages.flow import refused_row_letter
    users = users_in(0, 3)
    messages = [action(f"e{i}", users[i % 3], NOW - 10_000 + i, label="l", target_id="t", error="boom" if i % 2 else "",
                       properties={"p": "v", "token": "tok-Secret-42"},
                       keyword_args_json=json.dumps({"password": "hunter2", "q": "sales", "index": i}))
                for i in range(6)]
    first, _ = run(messages)
    letters = [refused_row_letter(row, "Code: 469. VIOLATED_CONSTRAINT", "user-actions", NOW) for row in first.rows]
    assert {(letter.reason, letter.source_offset) for letter in letters} == {("refused_by_store", i) for i in range(6)}
    assert all("hunter2" not in str(letter) and "tok-Secret-42" not in str(letter) for letter in letters)
    assert letters[0].scrubbed_fields == first.rows[0]["scrubbed_fields"]  # the audit stays with the letter
    replayed, _ = run([letter.scrubbed_payload for letter in letters])
    assert [{**row, "scrubbed_fields": []} for row in first.rows] == replayed.rows


def test_a_partition_remembers_only_the_sessions_that_can_still_continue():
    """Open sessions are kept per user; once the stream is past the allowed lateness plus the
    session gap, a quiet user's session can no longer continue and is forgotten."""
    users = users_in(0, 50)
    start = NOW - 6 * DAY_MS
    _, state = run([action(f"a{i}", user, start + i) for i, user in enumerate(users)])
    assert len(state.open_sessions) == 50
    result, state = run([action("late-day", users[0], NOW - 1000)], state)
    assert list(state.open_sessions) == [SCRUBBER.scrub_user(users[0])]
    assert result.rows[0]["session_id"].startswith("s_")


def test_the_agent_takes_each_partition_in_offset_order_and_rewinds_to_a_hole():
    """An offset jump within a partition is a hole: nothing past it is taken until it has been read
    again (or the broker shows it has no records there), and a redelivery of what was taken already
    is skipped."""
    from streams.runtime.continuity import InputContinuity
    continuity = InputContinuity("user-actions")
    continuity.start(0, 10)  # partition 0 committed at 10; partition 1 never committed
    taken = [(p, o) for p, o in [(0, 10), (0, 11), (1, 4), (0, 11), (0, 14), (0, 15), (1, 5)]
             if continuity.admit(p, o)]
    assert taken == [(0, 10), (0, 11), (1, 4), (1, 5)]
    assert continuity.to_check == {0: (12, 14)}  # one hole, one look-up at the broker
    assert continuity.take_seeks(now=100.0, retry_after=1.0) == {0: 12}
    assert continuity.take_seeks(now=100.5, retry_after=1.0) == {}  # the re-read is under way
    assert not continuity.admit(0, 16)  # stale read-ahead from before the seek: seek again
    assert continuity.take_seeks(now=100.6, retry_after=1.0) == {0: 12}
    assert continuity.take_seeks(now=101.7, retry_after=1.0) == {0: 12}  # nothing came: once more
    assert [o for o in (12, 13, 14) if continuity.admit(0, o)] == [12, 13, 14]
    assert continuity.resolved == [0] and continuity.take_seeks(now=200.0, retry_after=1.0) == {}
    assert continuity.to_check == {0: (12, 14)}


def test_a_hole_right_after_a_filled_one_in_the_same_step_is_looked_up_too():
    """Within one step: stale read-ahead asks for the seek again, then the re-read fills the hole,
    then the partition jumps again (a transaction marker). The new hole is looked up: it is not
    taken for the old one, whose seek would otherwise be repeated for ever."""
    from streams.runtime.continuity import InputContinuity
    continuity = InputContinuity("user-actions")
    continuity.start(0, 0)
    assert [o for o in (0, 1, 3) if continuity.admit(0, o)] == [0, 1]  # hole at 2
    continuity.to_check.clear()  # its look-up started
    assert continuity.take_seeks(now=100.0, retry_after=1.0) == {0: 2}
    step = [9, 2, 3, 4, 6, 7]  # stale 9; the re-read 2..4; then offset 5 is missing
    assert [o for o in step if continuity.admit(0, o)] == [2, 3, 4]
    assert continuity.to_check == {0: (5, 6)}
    assert continuity.take_seeks(now=100.1, retry_after=1.0) == {0: 5}


def test_a_hole_at_the_committed_offset_is_a_hole_too():
    """The first message after an assignment must be the committed one: Faust lets one missing offset
    at the committed head through its commit check."""
    from streams.runtime.continuity import InputContinuity
    continuity = InputContinuity("user-actions")
    continuity.start(2, 500)
    assert not continuity.admit(2, 501)
    assert continuity.take_seeks(now=0.0, retry_after=1.0) == {2: 500}
    continuity.forget(2)  # revoked: the next owner starts from its own committed offset
    assert continuity.take_seeks(now=5.0, retry_after=1.0) == {}
    assert continuity.admit(2, 501)


def test_a_hole_the_broker_has_no_records_at_is_passed():
    """Transaction markers and records deleted by retention leave offsets no message will ever fill:
    once the broker says so, the partition goes on from its next record."""
    from streams.runtime.continuity import InputContinuity
    continuity = InputContinuity("user-actions")
    continuity.start(0, 10)
    assert not continuity.admit(0, 12)  # 10..11: say a commit marker and a deleted record
    assert continuity.to_check == {0: (10, 12)}
    continuity.take_seeks(now=0.0, retry_after=1.0)
    assert not continuity.pass_hole(0, 9, 12)  # not this partition's hole
    assert continuity.pass_hole(0, 10, 12)
    assert not continuity.admit(0, 13)  # read-ahead from before the seek: still skipped
    assert continuity.take_seeks(now=0.5, retry_after=1.0) == {0: 12}
    assert [o for o in (12, 13) if continuity.admit(0, o)] == [12, 13]
    assert continuity.resolved == [0]
    assert not continuity.pass_hole(0, 10, 12)  # a late answer changes nothing


def test_a_take_is_cut_into_steps_by_size_in_order():
    """A take of single actions or of envelopes goes through the stages in steps of about the same
    number of bytes; every message is in exactly one step, in the order taken."""
    from types import SimpleNamespace
    from streams.runtime.batching import steps_by_size
    taken = [SimpleNamespace(value=b"x" * size) for size in (300, 300, 5000, 300, 300, 300)]
    steps = steps_by_size(taken, 1000)
    assert [[len(record.value) for record in step] for step in steps] == [[300, 300, 5000], [300, 300, 300]]
    assert [e for step in steps for e in step] == taken
    assert steps_by_size([], 1000) == []


def test_a_pending_batch_holds_one_value_per_row_in_every_column():
    """Steps accumulate into one insert: every column must hold exactly one value per row."""
    from streams.runtime.batching import PendingBatch
    ann, bob = users_in(0, 2)
    state, batch = None, PendingBatch()
    for step in ([action("s1", ann, NOW - 9000), action("s2", bob, NOW - 8000)], [action("s3", ann, NOW - 7000)]):
        result, state = run(step, state)
        batch.add_rows(result.columns)
    assert batch.row_count == 3
    assert {name: len(values) for name, values in batch.columns.items()} == dict.fromkeys(batch.columns, 3)


@pytest.mark.clickhouse
def test_awkward_arguments_end_as_rows_or_dead_letters_never_as_a_failed_insert(ch):
    """An insert that fails stops the worker (it retries until ClickHouse takes the batch), so a
    value no store can hold must be refused before it: half a surrogate pair, an index too big."""
    from streams.store.sink import USER_ACTION_COLUMNS, ClickHouseWriter
    (ann,) = users_in(0, 1)
    result, _ = run([
        action("e1", ann, NOW - 3000, keyword_args_json='{"search_term": "a\\ud800b"}'),
        action("e2", ann, NOW - 2000, keyword_args_json='{"search_term": "\\ud83d\\ude00", "index": 1e300}'),
        action("e3", ann, NOW - 1000, keyword_args_json='{"index": 99999999999999999999}')])
    assert [(letter.event_id, letter.reason) for letter in result.dead_letters] == [("e1", "invalid_json")]
    ClickHouseWriter(ch).insert_columns("user_actions", result.columns, USER_ACTION_COLUMNS, "t")
    assert ch.query("SELECT event_id, search_term, result_index FROM user_actions ORDER BY event_id").result_rows \
        == [("e2", "\U0001F600", None), ("e3", "", None)]


_ADMISSION_BATCHES = st.lists(
    st.tuples(st.integers(0, 150),                               # event id: repeats are duplicates
              st.sampled_from(users_in(0, 12) + users_in(1, 1)),  # a user of another partition is re-routed
              st.integers(-5 * DAY_MS, 0),                        # how far behind "now": late and historical
              st.sampled_from(["", "{}", '{"index": "3"}', '{"a": [1]}', '[]', '{"oops',  # some not an object
                               '{"id": 12345678901234567890123}', '{"t": "\\ud83d\\ude00"}', '{"t": "a\\ud800"}'])),
    min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(_ADMISSION_BATCHES, st.lists(st.integers(0, 150), max_size=5), st.integers(-4 * DAY_MS, 0),
       st.integers(1, 60))
def test_admission_of_a_batch_at_once_is_admission_event_by_event(batch, seen, watermark_behind, generation):
    """A clean batch is judged in a few passes over its columns; any batch must come out exactly as
    it does event by event: the same events kept, counted, re-routed and dead-lettered, the same
    watermark and the same ids remembered."""
    messages = [(action(f"e{n}", user, NOW + behind, keyword_args_json=kwargs), Source("user-actions", 0, offset))
                for offset, (n, user, behind, kwargs) in enumerate(batch)]
    outcomes = []
    for at_once in (True, False):
        state = PartitionState(PartitionActivity(lateness_days=3), watermark_ms=NOW + watermark_behind,
                               recent_ids=RecentIds(generation_size=generation))
        for n in seen:
            state.recent_ids.remember(f"e{n}")
        result = flow.BatchResult()
        admitted = flow.admit(messages, state, STAGES, result, NOW, at_once=at_once)
        outcomes.append((admitted.fields, admitted.kwargs, admitted.pos_args, [s.offset for s in admitted.sources],
                         vars(result.counts), [bytes(d.SerializeToString()) for d in result.dead_letters],
                         result.reroutes, state.watermark_ms, state.recent_ids.current, state.recent_ids.previous))
    assert outcomes[0] == outcomes[1]
