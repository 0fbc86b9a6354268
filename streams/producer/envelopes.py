"""Envelope packing: a round of serialized events as one UserActionBatch message per partition."""
from __future__ import annotations

from typing import Any

from streams.contract import ENVELOPE_HEADER, partition_for_user


def pack_envelopes(serialized: list[tuple[bytes, bytes, Any]], partitions: int, max_bytes: int,
                   max_actions: int | None = None, shard_users: list[str] | None = None
                   ) -> list[tuple[bytes, bytes, int, list, list]]:
    """(key, UserAction bytes, item) per event -> (key, UserActionBatch bytes, partition, headers, items)
    per Kafka message: each event goes to the partition its user id as the tool knows it
    (`shard_users`, default the key) hashes to, as the default partitioner would put it, in order,
    at most `max_bytes` (and `max_actions`) per envelope (a bigger event goes alone). The consumer
    pays its per-message cost once per envelope."""
    users = shard_users or [entry[0].decode("utf-8", "replace") for entry in serialized]
    by_partition: dict[int, list] = {}
    for entry, user in zip(serialized, users):
        by_partition.setdefault(partition_for_user(user, partitions), []).append(entry)
    messages = []
    for partition, entries in by_partition.items():
        chunk: list = []
        size = 0
        for entry in entries:
            framed = _envelope_entry(entry[1])
            if chunk and (size + len(framed) > max_bytes or len(chunk) == max_actions):
                messages.append(_envelope_message(chunk, partition))
                chunk, size = [], 0
            chunk.append((entry, framed))
            size += len(framed)
        messages.append(_envelope_message(chunk, partition))
    return messages


def _envelope_entry(action_bytes: bytes) -> bytes:
    """One `repeated UserAction actions = 1` entry on the wire: tag, varint length, the message."""
    length, varint = len(action_bytes), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            return b"\x0a" + bytes(varint) + action_bytes


def _envelope_message(chunk: list, partition: int) -> tuple[bytes, bytes, int, list, list]:
    (first_key, _, _), _ = chunk[0]
    return (first_key, b"".join(framed for _, framed in chunk), partition, [ENVELOPE_HEADER],
            [item for (_, _, item), _ in chunk])
