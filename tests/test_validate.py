"""Validation: every way a message can be wrong ends in a precise reason code."""
import math

import pytest

from streams.stages import outcome
from streams.contract import UserAction
from streams.stages.outcome import Rejected
from streams.stages.validate import DAY_MS, Limits, check, decode, human_duration, parse_json_column, parse_json_field

NOW = 1_764_000_000_000
LIMITS = Limits()


def good(**changes) -> UserAction:
    fields = dict(event_id="e1", app="amundsen", user="ann@example.com", command="search_table",
                  schema_version=1, start_epoch_ms=NOW - 1000, end_epoch_ms=NOW - 900,
                  keyword_args_json='{"search_term": "orders"}', pos_args_json="[]")
    fields.update(changes)
    return UserAction(**fields)


def reason_of(raw: bytes, watermark_ms: int = 0) -> str | None:
    try:
        action = decode(raw, LIMITS)
        check(action, LIMITS, NOW)
        parse_json_field(action, "keyword_args_json", dict)
        parse_json_field(action, "pos_args_json", list)
    except Rejected as rejected:
        return rejected.reason
    return None


CASES = [
    ("valid", good().SerializeToString(), 0, None),
    ("garbage bytes", b"\xff\xfe\x00garbage", 0, outcome.UNDECODABLE),
    ("tombstone", None, 0, outcome.UNDECODABLE),
    ("huge", good(output="x" * 300_000).SerializeToString(), 0, outcome.OVERSIZED),
    ("huge field", good(error="x" * 70_000).SerializeToString(), 0, outcome.OVERSIZED),
    ("future schema", good(schema_version=2).SerializeToString(), 0, outcome.UNSUPPORTED_SCHEMA),
    ("no schema", good(schema_version=0).SerializeToString(), 0, outcome.UNSUPPORTED_SCHEMA),
    ("no user", good(user="").SerializeToString(), 0, outcome.MISSING_FIELD),
    ("no command", good(command="").SerializeToString(), 0, outcome.MISSING_FIELD),
    ("no event id", good(event_id="").SerializeToString(), 0, outcome.MISSING_FIELD),
    ("no start", good(start_epoch_ms=0, end_epoch_ms=0).SerializeToString(), 0, outcome.MISSING_FIELD),
    ("seconds not ms", good(start_epoch_ms=1_764_000_000, end_epoch_ms=0).SerializeToString(), 0,
     outcome.IMPLAUSIBLE_TIMESTAMP),
    ("end before start", good(end_epoch_ms=NOW - 2000).SerializeToString(), 0, outcome.END_BEFORE_START),
    ("from the future", good(start_epoch_ms=NOW + DAY_MS, end_epoch_ms=0).SerializeToString(), 0,
     outcome.FUTURE_TIMESTAMP),
    ("weeks old (a backfill): lateness is no reason to refuse", good(start_epoch_ms=NOW - 40 * DAY_MS,
                                                                      end_epoch_ms=0).SerializeToString(), 0, None),
    ("bad kwargs json", good(keyword_args_json="{oops").SerializeToString(), 0, outcome.INVALID_JSON),
    ("kwargs not an object", good(keyword_args_json="[1]").SerializeToString(), 0, outcome.INVALID_JSON),
    ("args not a list", good(pos_args_json='{"a": 1}').SerializeToString(), 0, outcome.INVALID_JSON),
    ("half a surrogate pair in kwargs", good(keyword_args_json='{"search_term": "a\\ud800b"}').SerializeToString(), 0,
     outcome.INVALID_JSON),
    ("half a surrogate pair in args", good(pos_args_json='["\\uDFFF"]').SerializeToString(), 0, outcome.INVALID_JSON),
    ("args nested deeper than the parser recurses", good(pos_args_json="[" * 20_000 + "]" * 20_000)
     .SerializeToString(), 0, outcome.INVALID_JSON),
    ("kwargs nested just below that: parsed", good(keyword_args_json='{"a": ' + "[" * 500 + "]" * 500 + "}")
     .SerializeToString(), 0, None),
    ("an escaped emoji (a whole pair)", good(keyword_args_json='{"search_term": "\\ud83d\\ude00"}').SerializeToString(),
     0, None),
    ("invalid utf-8", good(user="ANN").SerializeToString().replace(b"ANN", b"\xff\xfeN"), 0, outcome.INVALID_UTF8),
    ("user id too long", good(user="u" * 300).SerializeToString(), 0, outcome.INVALID_FIELD),
]


@pytest.mark.parametrize("text,parsed", [
    ('{"id": 123456789012345678901234567890}', {"id": 123456789012345678901234567890}),  # past 64 bits: exact
    ('{"id": -9223372036854775809, "n": 18446744073709551615}', {"id": -2**63 - 1, "n": 2**64 - 1}),
    ('{"table_key": "t_20240101123456789012345", "index": 2.50}', {"table_key": "t_20240101123456789012345", "index": 2.5}),
])
def test_arguments_parse_as_json_reads_them(text, parsed):
    """Arguments are read exactly as Python's json module reads them, whichever parser did the work."""
    assert parse_json_field(good(keyword_args_json=text), "keyword_args_json", dict) == parsed
    # a batch's column of them, parsed once per distinct text, beside texts that need no care
    assert parse_json_column(['{"a": 1}', text, "", text], "keyword_args_json", dict) == [{"a": 1}, parsed, {}, parsed]


def test_arguments_json_takes_nan_and_infinity_as_python_does():
    kwargs = parse_json_field(good(keyword_args_json='{"a": NaN, "b": 1e400, "c": -Infinity}'), "keyword_args_json", dict)
    assert math.isnan(kwargs["a"]) and kwargs["b"] == math.inf and kwargs["c"] == -math.inf


@pytest.mark.parametrize("name,raw,watermark,expected", CASES, ids=[c[0] for c in CASES])
def test_reason(name, raw, watermark, expected):
    assert reason_of(raw, watermark) == expected


def _decodable(raw) -> bool:
    try:
        decode(raw, LIMITS)
    except Rejected:
        return False
    return True


@pytest.mark.parametrize("enveloped", [False, True], ids=["message", "enveloped"])
@pytest.mark.parametrize("name,raw,watermark,expected", CASES, ids=[c[0] for c in CASES])
def test_a_batch_gives_each_message_the_reason_it_gets_alone(name, raw, watermark, expected, enveloped):
    """The pipeline judges a batch column-wide before it looks at single messages: a bad message
    must still get its own reason, and good neighbours in the same batch must still pass."""
    from streams.stages.active_users import PartitionActivity
    from streams.stages.enrich import load_mapping
    from streams.stages.outcome import Source
    from streams.stages.flow import PartitionState, Stages, process_batch
    from streams.stages.scrub import Scrubber, load_policy

    if enveloped and not _decodable(raw):
        pytest.skip("not a message an envelope can carry")
    neighbours = [] if watermark else [good(event_id="before"), good(event_id="after")]
    batch = [neighbours[0]] if neighbours else []
    batch.append(UserAction.FromString(raw) if enveloped else raw)
    batch.extend(neighbours[1:])
    size = sum(len(m) if isinstance(m, bytes) else m.ByteSize() for m in batch if m is not None)
    items = [(m.SerializeToString() if isinstance(m, UserAction) and not enveloped else m,
              Source("user-actions", 0, offset, size if enveloped else 0)) for offset, m in enumerate(batch)]
    state = PartitionState(PartitionActivity(3), watermark_ms=watermark)
    stages = Stages(LIMITS, load_mapping(), Scrubber(load_policy(hmac_key="k")), partitions=1)
    result = process_batch(items, state, stages, {}, now_ms=NOW)

    assert [letter.reason for letter in result.dead_letters] == ([expected] if expected else [])
    kept = ["e1"] if expected is None else []
    assert result.columns["event_id"] == (["before", *kept, "after"] if neighbours else kept)


@pytest.mark.parametrize("ms, said", [(850, "850 ms"), (4200, "4.2 s"), (12 * 60_000, "12 min"),
                                      (185 * 60_000, "3 h 5 min"), (2 * 3_600_000, "2 h"),
                                      (32_169_004_000, "372 days 7 h"), (86_400_000, "1 day")])
def test_durations_in_details_are_said_in_days_and_hours(ms, said):
    assert human_duration(ms) == said
