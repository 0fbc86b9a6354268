"""Actions as columns, decoded natively, with a `UserAction` made only for a row that needs one.

`decode(raw)` runs the C decoder (`_wire.c`, built at install) over a `UserActionBatch`, and
`decode_messages(raws)` over single `UserAction` messages: the 18 scalar fields of the actions as
columns, their properties as dicts, each action's size, each distinct string of a call made once.
It takes only the canonical encoding, what the official runtimes write, so each action it takes
parses the same with upb and its size is upb's `ByteSize()`; anything else (an unknown field, a
field twice, a stray byte, invalid UTF-8) gives None, and the caller decodes with upb, whose verdict
it then is. Without the compiled module (no C compiler at install) both are always None.
"""
from __future__ import annotations

import bisect
import itertools
import operator

from streams.contract.tally.v1.user_action_pb2 import UserAction, UserActionBatch

try:
    from streams.contract._wire import decode_actions as _decode_actions, decode_envelope as _decode_envelope
except ImportError:  # built without a C compiler: every message goes through upb
    _decode_actions = _decode_envelope = None

NATIVE = _decode_envelope is not None

# The decoder's columns, in field-number order (every UserAction field but the properties map).
FIELDS = tuple(field.name for field in sorted(UserAction.DESCRIPTOR.fields, key=operator.attrgetter("number"))
               if field.name != "properties")


class Decoded:
    """Some actions as columns: `fields` (name -> values), `properties`, and `sizes` on the wire."""
    __slots__ = ("fields", "properties", "sizes")

    def __init__(self, columns: tuple[list, ...], properties: list[dict], sizes: list[int]) -> None:
        self.fields, self.properties, self.sizes = dict(zip(FIELDS, columns)), properties, sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def action(self, index: int) -> UserAction:
        raise NotImplementedError

    def actions(self) -> list[UserAction]:
        return list(map(self.action, range(len(self.sizes))))


class DecodedEnvelope(Decoded):
    """The actions of one envelope, each at `starts[i]` in `raw`."""
    __slots__ = ("raw", "starts")

    def __init__(self, raw: bytes, columns, properties, sizes, starts: list[int]) -> None:
        super().__init__(columns, properties, sizes)
        self.raw, self.starts = raw, starts

    def action(self, index: int) -> UserAction:
        start = self.starts[index]
        return UserAction.FromString(self.raw[start:start + self.sizes[index]])

    def actions(self) -> list[UserAction]:
        return list(UserActionBatch.FromString(self.raw).actions)  # all of them: one upb call


class DecodedMessages(Decoded):
    """Single messages, each its own bytes in `raws`."""
    __slots__ = ("raws",)

    def __init__(self, raws: list[bytes], columns, properties, sizes) -> None:
        super().__init__(columns, properties, sizes)
        self.raws = raws

    def action(self, index: int) -> UserAction:
        return UserAction.FromString(self.raws[index])


def decode(raw: bytes) -> DecodedEnvelope | None:
    """An envelope's actions as columns, or None when the native decoder does not take it (see the module)."""
    if _decode_envelope is None or type(raw) is not bytes:
        return None
    decoded = _decode_envelope(raw)
    return None if decoded is None else DecodedEnvelope(raw, *decoded)


def decode_messages(raws: list[bytes]) -> DecodedMessages | None:
    """Single messages (all bytes) as columns, or None when the native decoder does not take one."""
    if _decode_actions is None:
        return None
    decoded = _decode_actions(raws)
    return None if decoded is None else DecodedMessages(raws, *decoded)


class LazyActions:
    """The actions of some decoded batches as one sequence, each parsed by upb when first asked
    for (most rows of a clean batch never are)."""

    def __init__(self, parts: list[Decoded]) -> None:
        self.parts = parts
        self.firsts = list(itertools.accumulate(map(len, parts), initial=0))[:-1]
        self.length = sum(map(len, parts))
        self.parsed: dict[int, UserAction] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> UserAction:
        found = self.parsed.get(index)
        if found is None:
            if not 0 <= index < self.length:
                raise IndexError(index)
            at = bisect.bisect_right(self.firsts, index) - 1
            found = self.parsed[index] = self.parts[at].action(index - self.firsts[at])
        return found

    def __iter__(self):
        if not self.parsed:  # none asked for yet: each part's all at once
            return itertools.chain.from_iterable(part.actions() for part in self.parts)
        return map(self.__getitem__, range(self.length))
