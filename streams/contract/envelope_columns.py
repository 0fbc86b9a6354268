"""An envelope's actions as columns, decoded natively, with a `UserAction` made only for a row that
needs one.

`decode(raw)` runs the C decoder (`_wire.c`, built at install) over a `UserActionBatch`: the 18
scalar fields of its actions as columns, their properties as dicts, and each action's span of the
bytes. It takes only the canonical encoding, what the official runtimes write, so each action it
takes parses the same with upb and its span is upb's `ByteSize()`; anything else (an unknown field,
a field twice, a stray byte, invalid UTF-8) gives None, and the caller decodes with upb, whose
verdict it then is. Without the compiled module (no C compiler at install) `decode` is always None.
"""
from __future__ import annotations

import bisect
import itertools
import operator

from streams.contract.tally.v1.user_action_pb2 import UserAction

try:
    from streams.contract._wire import decode_envelope as _decode_envelope
except ImportError:  # built without a C compiler: every envelope goes through upb
    _decode_envelope = None

NATIVE = _decode_envelope is not None

# The decoder's columns, in field-number order (every UserAction field but the properties map).
FIELDS = tuple(field.name for field in sorted(UserAction.DESCRIPTOR.fields, key=operator.attrgetter("number"))
               if field.name != "properties")


class DecodedEnvelope:
    """The actions of one envelope as columns: `fields` (name -> values), `properties`, and where
    each action lies in `raw` (`starts`, `sizes`)."""
    __slots__ = ("raw", "fields", "properties", "starts", "sizes")

    def __init__(self, raw: bytes, columns: tuple[list, ...], properties: list[dict], starts: list[int],
                 sizes: list[int]) -> None:
        self.raw, self.properties, self.starts, self.sizes = raw, properties, starts, sizes
        self.fields = dict(zip(FIELDS, columns))

    def __len__(self) -> int:
        return len(self.sizes)

    def action(self, index: int) -> UserAction:
        start = self.starts[index]
        return UserAction.FromString(self.raw[start:start + self.sizes[index]])

    def actions(self) -> list[UserAction]:
        return list(map(self.action, range(len(self.sizes))))


def decode(raw: bytes) -> DecodedEnvelope | None:
    """The envelope as columns, or None when the native decoder does not take it (see the module)."""
    if _decode_envelope is None or type(raw) is not bytes:
        return None
    decoded = _decode_envelope(raw)
    return None if decoded is None else DecodedEnvelope(raw, *decoded)


class LazyActions:
    """The actions of some decoded envelopes as one sequence, each parsed by upb when first asked
    for (most rows of a clean batch never are)."""

    def __init__(self, envelopes: list[DecodedEnvelope]) -> None:
        self.envelopes = envelopes
        self.firsts = list(itertools.accumulate(map(len, envelopes), initial=0))[:-1]
        self.length = sum(map(len, envelopes))
        self.parsed: dict[int, UserAction] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> UserAction:
        found = self.parsed.get(index)
        if found is None:
            if not 0 <= index < self.length:
                raise IndexError(index)
            at = bisect.bisect_right(self.firsts, index) - 1
            found = self.parsed[index] = self.envelopes[at].action(index - self.firsts[at])
        return found

    def __iter__(self):
        return map(self.__getitem__, range(self.length))
