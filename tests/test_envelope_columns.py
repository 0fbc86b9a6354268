"""Envelopes decoded natively into columns: the same values, sizes and verdicts as upb, and anything
the decoder does not take on handed back to upb."""
import json
import shutil
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from streams.contract import ENVELOPE_HEADER, UserAction, UserActionBatch, envelope_columns
from streams.stages import flow
from streams.stages.active_users import PartitionActivity
from streams.stages.flow import PartitionState, RecentIds, process_batch, unpack
from streams.stages.outcome import Source
from streams.stages.validate import DAY_MS, Limits, unpack_envelope

from test_pipeline import NOW, STAGES, action, users_in

native = pytest.mark.skipif(not envelope_columns.NATIVE, reason="the native decoder is not built here")


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_the_install_builds_the_native_decoder():
    assert envelope_columns.NATIVE, "streams/contract/_wire.c was not built: run `make install` (pip install -e .)"


def agrees_with_upb(raw: bytes) -> None:
    """`decode(raw)` gives what upb gives: the fields, the properties, each action's ByteSize()."""
    decoded = envelope_columns.decode(raw)
    actions = unpack_envelope(raw, Limits())
    assert decoded is not None and len(decoded) == len(actions)
    for name, column in decoded.fields.items():
        assert column == [getattr(one, name) for one in actions], name
    assert decoded.properties == [dict(one.properties) for one in actions]
    assert decoded.sizes == [one.ByteSize() for one in actions]
    assert decoded.actions() == actions


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # any valid UTF-8 (no lone surrogates)
_ACTIONS = st.builds(
    UserAction, host_name=_TEXT, start_epoch_ms=st.integers(-2**63, 2**63 - 1), end_epoch_ms=st.integers(-2**63, 2**63 - 1),
    pos_args_json=_TEXT, keyword_args_json=_TEXT, output=_TEXT, error=_TEXT, user=_TEXT, command=_TEXT,
    event_id=_TEXT, app=_TEXT, schema_version=st.integers(0, 2**32 - 1), session_id=_TEXT, target_id=_TEXT,
    target_type=_TEXT, label=_TEXT, location=_TEXT, value=_TEXT, properties=st.dictionaries(_TEXT, _TEXT, max_size=4))


@native
@settings(max_examples=300, deadline=None)
@given(st.lists(_ACTIONS, max_size=6))
def test_any_envelope_decodes_as_upb_decodes_it(actions):
    agrees_with_upb(UserActionBatch(actions=actions).SerializeToString())


@native
@settings(max_examples=500, deadline=None)
@given(st.lists(_ACTIONS, min_size=1, max_size=3), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255),
                                                                       st.sampled_from(["flip", "insert", "delete"])),
                                                             min_size=1, max_size=3))
def test_a_damaged_envelope_is_taken_only_when_upb_reads_it_the_same(actions, damage):
    """Whatever the bytes, the decoder either hands them back or agrees with upb: it never takes
    what upb refuses, so every verdict stays upb's."""
    raw = bytearray(UserActionBatch(actions=actions).SerializeToString())
    for at, byte, how in damage:
        at %= len(raw) + 1
        if how == "insert":
            raw[at:at] = bytes([byte])
        elif at < len(raw):
            if how == "flip":
                raw[at] ^= byte or 1
            else:
                del raw[at]
    raw = bytes(raw)
    if envelope_columns.decode(raw) is not None:
        agrees_with_upb(raw)


@native
@pytest.mark.parametrize("how, raw", [
    ("an unknown envelope field", b"\x10\x01"),
    ("an unknown action field", b"\x0a\x03\xa0\x01\x01"),                   # field 20, varint
    ("a field twice", b"\x0a\x06\x42\x01a\x42\x01b"),                        # user twice: upb keeps the last
    ("an explicit default", b"\x0a\x02\x10\x00"),                            # start_epoch_ms = 0
    ("an empty string sent", b"\x0a\x02\x42\x00"),
    ("a varint longer than it needs", b"\x0a\x03\x10\x81\x00"),
    ("a map entry without its key", b"\x0a\x06\x9a\x01\x03\x12\x01v"),
    ("a key twice in the map", b"\x0a\x10\x9a\x01\x06\x0a\x01k\x12\x01a\x9a\x01\x06\x0a\x01k\x12\x01b"),
    ("invalid UTF-8", b"\x0a\x03\x42\x01\xff"),
    ("a cut-off action", b"\x0a\x05\x42\x01a"),
    ("the wrong wire type", b"\x0a\x02\x41\x00"),
])
def test_what_is_not_the_canonical_encoding_goes_to_upb(how, raw):
    assert envelope_columns.decode(raw) is None, how


@native
def test_a_row_is_parsed_only_when_asked_for():
    raws = [UserActionBatch(actions=[UserAction(event_id=f"e{i}{j}", user="ann") for j in range(i + 1)]).SerializeToString()
            for i in range(3)]
    lazy = envelope_columns.LazyActions([envelope_columns.decode(raw) for raw in raws])
    assert len(lazy) == 6 and lazy[3].event_id == "e20" and list(lazy.parsed) == [3]
    assert [one.event_id for one in lazy] == ["e00", "e10", "e11", "e20", "e21", "e22"]
    with pytest.raises(IndexError):
        lazy[6]


def _outcome(result, state):
    return (result.rows, vars(result.counts), [bytes(d.SerializeToString()) for d in result.dead_letters],
            result.reroutes, result.metric_counts, result.corrections, result.newest_event_ms, state.watermark_ms,
            state.recent_ids.current, state.recent_ids.previous, state.open_sessions)


_BATCHES = st.lists(
    st.tuples(st.integers(0, 40),                                          # event id: repeats are duplicates
              st.sampled_from(users_in(0, 3) + users_in(1, 1)),            # one user of another partition
              st.integers(-5 * DAY_MS, 0) | st.just(-40 * DAY_MS) | st.just(DAY_MS),  # late, historical, future
              st.sampled_from(["", '{"index": "3", "source": "search"}', '{"table_key": "t1"}', '[]', '{"oops',
                               '{"password": "hunter2", "q": "ann@example.com"}'])),
    min_size=1, max_size=40)


@native
@settings(max_examples=150, deadline=None)
@given(_BATCHES, st.integers(1, 7), st.booleans(), st.integers(1, 50))
def test_a_batch_of_envelopes_as_columns_comes_out_as_through_upb(batch, per_envelope, with_single, generation):
    """The same envelopes through the stages, unpacked as columns and as upb actions: the same rows,
    counts, dead letters, re-routes, active-user counts and state, whatever is wrong with them."""
    actions = [action(f"e{n}", user, NOW + behind, keyword_args_json=kwargs, properties={"tab": str(n)})
               for n, user, behind, kwargs in batch]
    envelopes = [UserActionBatch(actions=[UserAction.FromString(raw) for raw in actions[at:at + per_envelope]])
                 .SerializeToString() for at in range(0, len(actions), per_envelope)]
    outcomes = []
    for as_columns in (True, False):
        items = []
        for offset, raw in enumerate(envelopes):
            items.extend(unpack(raw, [ENVELOPE_HEADER], Source("user-actions", 0, offset, len(raw)), STAGES, NOW,
                                as_columns=as_columns)[0])
        if with_single:  # a single message in the same step: the envelopes are made into actions
            items.append((actions[0], Source("user-actions", 0, len(envelopes), len(actions[0]))))
        assert flow.events_of(items) == len(actions) + with_single
        state = PartitionState(PartitionActivity(lateness_days=3), recent_ids=RecentIds(generation_size=generation))
        result = process_batch(items, state, STAGES, {}, now_ms=NOW)
        outcomes.append(_outcome(result, state))
    assert outcomes[0] == outcomes[1]


@native
def test_an_envelope_the_decoder_hands_back_goes_through_upb():
    (ann,) = users_in(0, 1)
    envelope = UserActionBatch(actions=[UserAction.FromString(action("x1", ann, NOW))]).SerializeToString()
    odd = envelope + b"\x10\x01"  # an unknown envelope field: upb keeps it, the decoder does not take it on
    items, letter = unpack(odd, [ENVELOPE_HEADER], Source("user-actions", 0, 0), STAGES, NOW, as_columns=True)
    assert letter is None and [type(raw) for raw, _ in items] == [UserAction]
    result = process_batch(items, PartitionState(PartitionActivity(3)), STAGES, {}, now_ms=NOW)
    assert [row["event_id"] for row in result.rows] == ["x1"]
    [(columns, _)], _ = unpack(envelope, [ENVELOPE_HEADER], Source("user-actions", 0, 0), STAGES, NOW, as_columns=True)
    assert type(columns) is envelope_columns.DecodedEnvelope and columns.fields["event_id"] == ["x1"]
    assert json.loads(columns.fields["keyword_args_json"][0])["index"] == "1"


@native
@settings(max_examples=150, deadline=None)
@given(_BATCHES, st.sampled_from([None, b"\x08garbage", b"\x42\x01a\x42\x01b", b""]), st.integers(1, 50))
def test_single_messages_as_columns_come_out_as_through_upb(batch, odd, generation):
    """Single messages (what every other Kafka client sends) through the stages, decoded natively
    and by upb: the same outcome; one message the decoder does not take on sends all to upb."""
    messages = [action(f"e{n}", user, NOW + behind, keyword_args_json=kwargs) for n, user, behind, kwargs in batch]
    outcomes = []
    for with_odd, native_decoder in ((False, True), (False, False), (True, True), (True, False)):
        items = [(raw, Source("user-actions", 0, offset, len(raw))) for offset, raw in enumerate(messages)]
        if with_odd:
            items.insert(len(items) // 2, (odd, Source("user-actions", 0, 99, len(odd or b""))))
        state = PartitionState(PartitionActivity(lateness_days=3), recent_ids=RecentIds(generation_size=generation))
        with mock.patch.object(envelope_columns, "_decode_actions",
                               envelope_columns._decode_actions if native_decoder else None):
            outcomes.append(_outcome(process_batch(items, state, STAGES, {}, now_ms=NOW), state))
    assert outcomes[0] == outcomes[1] and outcomes[2] == outcomes[3]


@native
def test_strings_are_shared_and_stay_right_past_the_decoders_room():
    """Each distinct short string of a call is one object while the call's table has room; past it
    (more distinct strings than the table sized for the call holds) values are still right."""
    raw = UserActionBatch(actions=[UserAction(event_id=f"e{j}", user=f"user-{j}", app="bi", host_name=f"h{j}",
                                              properties={"tab": f"t{j}", f"k{j}": "v"}) for j in range(2000)]
                          ).SerializeToString()
    agrees_with_upb(raw)
    decoded = envelope_columns.decode(raw)
    assert decoded.fields["app"][0] is decoded.fields["app"][-1]
    assert decoded.fields["event_id"][0] is not envelope_columns.decode(raw).fields["event_id"][0]
    messages = [UserAction(event_id=f"e{j}", user=f"user-{j % 7}", app="bi").SerializeToString() for j in range(3000)]
    singles = envelope_columns.decode_messages(messages)
    assert singles.fields["user"] == [f"user-{j % 7}" for j in range(3000)] and singles.fields["user"][0] is singles.fields["user"][7]
