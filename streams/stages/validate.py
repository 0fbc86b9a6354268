"""Validate: raw Kafka bytes in, a decoded `UserAction` out, or `Rejected` with a reason.

Lateness is no reason to refuse an event: a backfill of months is kept like live traffic (the
stages count it, `flow.admit`). The wall clock only bounds the future: no real event is stamped
after "now".
"""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass

import orjson
from google.protobuf.message import DecodeError

from streams.contract import SCHEMA_VERSION, UserAction, UserActionBatch
from streams.stages.outcome import (END_BEFORE_START, FUTURE_TIMESTAMP, IMPLAUSIBLE_TIMESTAMP, INVALID_FIELD, INVALID_JSON,
                      INVALID_UTF8, MISSING_FIELD, OVERSIZED, UNDECODABLE, UNSUPPORTED_SCHEMA,
                      Rejected)

DAY_MS = 86_400_000
EARLIEST_PLAUSIBLE_MS = 946_684_800_000  # 2000-01-01: anything older is a unit or clock bug
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 256 * 1024
    max_field_bytes: int = 64 * 1024
    allowed_lateness_ms: int = 3 * DAY_MS
    max_future_ms: int = 10 * 60_000
    max_duration_ms: int = DAY_MS

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(max_message_bytes=settings.max_message_bytes,
                   allowed_lateness_ms=settings.allowed_lateness_days * DAY_MS,
                   max_future_ms=settings.max_future_ms)


def decode(raw: bytes | UserAction | None, limits: Limits) -> UserAction:
    """Parse the Protobuf bytes; size and UTF-8 problems are rejected before anything else.
    An action that came out of an envelope is already parsed: `check` judges its size."""
    if isinstance(raw, UserAction):
        return raw
    if raw is None:
        raise Rejected(UNDECODABLE, "empty message (tombstone)")
    if len(raw) > limits.max_message_bytes:
        raise Rejected(OVERSIZED, f"message is {len(raw)} bytes, limit {limits.max_message_bytes}")
    action = UserAction()
    try:
        action.ParseFromString(raw)
    except DecodeError as exc:
        raise _undecodable(exc, "UserAction") from None
    return action


def decode_all(raws: list, limits: Limits) -> list[UserAction] | None:
    """`decode` of each of a batch of messages, one C call each, when every one is bytes within the
    size limit and parses; else None (then `decode` judges them one by one)."""
    if set(map(type, raws)) != {bytes} or max(map(len, raws)) > limits.max_message_bytes:
        return None
    try:
        return list(map(UserAction.FromString, raws))
    except DecodeError:
        return None


def _undecodable(exc: DecodeError, message_type: str) -> Rejected:
    # upb reports invalid UTF-8 in string fields as a DecodeError too
    text = str(exc).lower()
    reason = INVALID_UTF8 if "utf-8" in text or "utf8" in text else UNDECODABLE
    return Rejected(reason, f"not a tally.v1.{message_type}: {exc}")


def unpack_envelope(raw: bytes | None, limits: Limits) -> list[UserAction]:
    """The actions of a UserActionBatch message; `Rejected` when the envelope itself is unreadable."""
    if raw is None:
        raise Rejected(UNDECODABLE, "empty envelope")
    envelope = UserActionBatch()
    try:
        envelope.ParseFromString(raw)
    except DecodeError as exc:
        raise _undecodable(exc, "UserActionBatch") from None
    return list(envelope.actions)


_TEXT_FIELDS = ("pos_args_json", "keyword_args_json", "output", "error", "label", "value", "location",
                "target_id", "host_name", "session_id")


def check(action: UserAction, limits: Limits, now_ms: int, size: int | None = None) -> None:
    """Raise `Rejected` if the decoded action breaks the contract. `size` is its serialized size when
    known (the bytes it was parsed from)."""
    version = action.schema_version
    if version > SCHEMA_VERSION or version == 0:
        raise Rejected(UNSUPPORTED_SCHEMA, f"schema_version {version}; this pipeline reads 1..{SCHEMA_VERSION}")
    ids = (action.event_id, action.user, action.command, action.app)
    if not all(ids) or max(map(len, ids)) > MAX_ID_CHARS:
        for name, value in zip(("event_id", "user", "command", "app"), ids):
            if not value:
                raise Rejected(MISSING_FIELD, f"{name} is empty")
            if len(value) > MAX_ID_CHARS:
                raise Rejected(INVALID_FIELD, f"{name} is {len(value)} chars, limit {MAX_ID_CHARS}")
    size = action.ByteSize() if size is None else size
    if size > limits.max_field_bytes:  # only then can one field be too big
        if size > limits.max_message_bytes:
            raise Rejected(OVERSIZED, f"action is {size} bytes, limit {limits.max_message_bytes}")
        for name in _TEXT_FIELDS:
            if len(getattr(action, name)) > limits.max_field_bytes:
                raise Rejected(OVERSIZED, f"{name} is over {limits.max_field_bytes} bytes")
    start, end = action.start_epoch_ms, action.end_epoch_ms
    if start == 0:
        raise Rejected(MISSING_FIELD, "start_epoch_ms is empty")
    if start < EARLIEST_PLAUSIBLE_MS:
        raise Rejected(IMPLAUSIBLE_TIMESTAMP, f"start_epoch_ms {start} is before 2000-01-01 (seconds, not ms?)")
    if end and end < start:
        raise Rejected(END_BEFORE_START, f"end_epoch_ms {end} is {human_duration(start - end)} before start_epoch_ms")
    if end and end - start > limits.max_duration_ms:
        raise Rejected(INVALID_FIELD, f"duration {human_duration(end - start)} is over {human_duration(limits.max_duration_ms)}")
    if start > now_ms + limits.max_future_ms:
        raise Rejected(FUTURE_TIMESTAMP, f"start_epoch_ms {start} is {human_duration(start - now_ms)} ahead of the clock")


def parse_json_field(action: UserAction, name: str, expected: type):
    """The parsed JSON of an argument field ({} / [] when empty); `Rejected` when it is not valid JSON."""
    return parse_json(getattr(action, name), name, expected)


_EMPTY = {dict: "{}", list: "[]"}


def parse_json(text: str, name: str, expected: type):
    """The parsed JSON of the text of field `name` ({} / [] when empty); `Rejected` when it is not valid JSON."""
    return _parse(text, name, expected, careful=True)


def parse_json_column(texts: list[str], name: str, expected: type) -> list:
    """`parse_json` of each text of a column, each distinct text once (a batch repeats the same
    arguments): rows of one text share its value, to be read, never changed."""
    distinct = set(texts)
    joined = "\n".join(distinct)
    # the looks at the text behind orjson's answer, once over all of it: most batches need neither
    careful = _has_long_digits(joined) or "\\ud" in joined or "\\uD" in joined
    parsed = {text: _parse(text, name, expected, careful) for text in distinct}
    return list(map(parsed.__getitem__, texts))


def _parse(text: str, name: str, expected: type, careful: bool):
    """`parse_json`; `careful` False when the text is known to hold no long digit run and no \\ud escape."""
    if not text or text == _EMPTY[expected]:  # the commonest arguments of all, without the parser
        return expected()
    try:
        value = _loads(text, careful)
    except ValueError as exc:
        raise Rejected(INVALID_JSON, f"{name} is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[...]]]]" deeper than the parser recurses
        raise Rejected(INVALID_JSON, f"{name} is nested too deep to parse ({len(text)} chars)") from None
    if not isinstance(value, expected):
        raise Rejected(INVALID_JSON, f"{name} must be a JSON {expected.__name__}, got {type(value).__name__}")
    if careful and ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(value):
        raise Rejected(INVALID_JSON, f"{name} has a \\ud800-\\udfff escape without its pair: not Unicode text, "
                                     f"and no store can keep it")
    return value


# orjson parses in a quarter of json's time. Where the two differ, json decides: orjson refuses
# some text json takes (NaN, 1e400, a lone surrogate escape: judged below), and reads an integer
# past 64 bits as a float where json keeps it exact (a run of 19 digits is where that can start).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def _has_long_digits(text: str) -> bool:
    """Whether the text has 19 ASCII digits in a row (UTF-8 encodes nothing else with those bytes)."""
    return _NINETEEN_DIGITS in text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_ZERO)


def _loads(text: str, careful: bool = True):
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    return json.loads(text) if careful and _has_long_digits(text) else value


def _has_lone_surrogate(value) -> bool:
    """True when a string in the parsed JSON holds half a surrogate pair (an escape such as "\\ud800"
    alone is valid JSON, but not Unicode). Only checked when the text has such an escape at all."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ---- a batch at once ------------------------------------------------------------------------

# The scalar fields of the wire message that validation and the row need, read off each action in
# one C call per action and turned into columns.
WIRE_FIELDS = ("schema_version", "event_id", "app", "command", "user", "start_epoch_ms", "end_epoch_ms",
               "host_name", "session_id", "pos_args_json", "keyword_args_json", "output", "error", "target_id",
               "label", "location", "value")
_read_wire_fields = operator.attrgetter(*WIRE_FIELDS)


def read_fields(actions: list[UserAction]) -> dict[str, list]:
    """The `WIRE_FIELDS` of a batch of actions, as columns."""
    if not actions:
        return {name: [] for name in WIRE_FIELDS}
    return dict(zip(WIRE_FIELDS, map(list, zip(*map(_read_wire_fields, actions)))))


def suspects(fields: dict[str, list], sizes: list[int], limits: Limits, now_ms: int) -> set[int]:
    """The rows of a batch that may break a rule: `check` must judge each of them;
    every other row is known to pass those rules. `sizes` are the rows' serialized sizes (or an upper
    bound). Column-wide tests first (in C); a column that fails one makes every row a suspect."""
    n = len(sizes)
    if not n:
        return set()
    if any(not all(fields[name]) or max(map(len, fields[name])) > MAX_ID_CHARS
           for name in ("event_id", "user", "command", "app")):
        return set(range(n))
    earliest, latest, longest = EARLIEST_PLAUSIBLE_MS, now_ms + limits.max_future_ms, limits.max_duration_ms
    versions, starts, ends = fields["schema_version"], fields["start_epoch_ms"], fields["end_epoch_ms"]
    if (0 < min(versions) and max(versions) <= SCHEMA_VERSION and earliest <= min(starts) and max(starts) <= latest
            and _durations_in_range(starts, ends, longest)):
        found = set()  # the usual batch: every row passes, judged over whole columns
    else:
        found = {index for index, (version, start, end) in enumerate(zip(versions, starts, ends))
                 if not (0 < version <= SCHEMA_VERSION and earliest <= start <= latest
                         and (end == 0 or start <= end <= start + longest))}
    if max(sizes) > limits.max_field_bytes:  # only then can a message or one of its fields be too big
        found.update(index for index, size in enumerate(sizes) if size > limits.max_field_bytes)
    return found


def _durations_in_range(starts: list[int], ends: list[int], longest: int) -> bool:
    """Whether every end is 0 (no duration) or from its start to `longest` after it, when that can be
    told over the columns; False sends the rows to be judged one by one."""
    if 0 in ends:
        return not any(ends)
    durations = list(map(operator.sub, ends, starts))
    return min(durations) >= 0 and max(durations) <= longest


def human_duration(ms: int) -> str:
    """A span as a person says it: 850 ms, 4.2 s, 12 min, 3 h 5 min, 372 days 7 h."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes = ms // 60_000
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} day{'s' if days != 1 else ''} {hours} h" if hours else f"{days} day{'s' if days != 1 else ''}"
