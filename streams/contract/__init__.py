"""The wire contract: generated Protobuf messages and the few helpers every stage shares.

Generated code lives in `tally/v1/` (from `proto/tally/v1/*.proto`); `tests/test_contract.py`
fails when it is stale. Regenerate with `make proto`.
"""
from __future__ import annotations

import functools
import os
import time
import uuid

from aiokafka.partitioner import murmur2

from streams.contract.tally.v1.pipeline_pb2 import Alert, DeadLetter, MetricUpdate
from streams.contract.tally.v1.user_action_pb2 import UserAction, UserActionBatch, UserProfile

SCHEMA_VERSION = 1  # the newest UserAction schema this code understands

# The Kafka header that marks a message as a UserActionBatch envelope (see user_action.proto).
ENVELOPE_HEADER = ("tally-message", b"tally.v1.UserActionBatch")

__all__ = ["Alert", "DeadLetter", "MetricUpdate", "UserAction", "UserActionBatch", "UserProfile", "ENVELOPE_HEADER",
           "SCHEMA_VERSION", "is_envelope", "new_event_id", "partition_for_user"]


def is_envelope(headers) -> bool:
    """Whether Kafka message headers (a list of (key, value) pairs, or a dict) mark a UserActionBatch."""
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(key == ENVELOPE_HEADER[0] and bytes(value) == ENVELOPE_HEADER[1] for key, value in items)


def new_event_id(epoch_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit millisecond timestamp, then random bits; sorts by time."""
    ms = int(time.time() * 1000) if epoch_ms is None else epoch_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76                      # version 7
    value |= ((rand >> 62) & 0xFFF) << 64   # rand_a, 12 bits
    value |= 0b10 << 62                     # RFC 4122 variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF   # rand_b, 62 bits
    return str(uuid.UUID(int=value))


@functools.lru_cache(maxsize=200_000)
def partition_for_user(user: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Java and aiokafka use) picks for a user key."""
    return (murmur2(user.encode()) & 0x7FFFFFFF) % partitions
