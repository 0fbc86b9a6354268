"""What a stage can say about an event: kept, or rejected with a reason for the dead-letter topic.

Stages raise `Rejected`; only the wiring turns it into a dead-letter message and a counter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

# Dead-letter reason codes (stable: they are stored and alerted on).
UNDECODABLE = "undecodable"
OVERSIZED = "oversized"
UNSUPPORTED_SCHEMA = "unsupported_schema_version"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
END_BEFORE_START = "end_before_start"
FUTURE_TIMESTAMP = "future_timestamp"
TOO_LATE = "too_late"  # no longer given (every valid event is kept, however late); kept for stored letters
IMPLAUSIBLE_TIMESTAMP = "implausible_timestamp"
REFUSED_BY_STORE = "refused_by_store"  # valid, but ClickHouse would not take its row (a constraint, a type)

REASONS = (UNDECODABLE, OVERSIZED, UNSUPPORTED_SCHEMA, MISSING_FIELD, INVALID_FIELD, INVALID_UTF8,
           INVALID_JSON, END_BEFORE_START, FUTURE_TIMESTAMP, TOO_LATE, IMPLAUSIBLE_TIMESTAMP, REFUSED_BY_STORE)


# How late a kept event came, judged against its partition's newest event time.
ON_TIME = "on_time"
LATE = "late"              # behind it, within the allowed lateness: the live state takes it as is
HISTORICAL = "historical"  # further behind (a backfill): stored, its days recounted from the store
VERDICT_HEADER = "tally-verdict"  # on a re-routed copy: the verdict of the partition that first read it


class Rejected(Exception):
    """An event the pipeline refuses; `reason` is one of REASONS, `detail` says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Source(NamedTuple):
    """Where a message came from: enough to find it again and to account for its offset."""
    topic: str
    partition: int
    offset: int
    size: int = 0  # bytes of the Kafka message (an envelope's, for an action unpacked from one); 0: unknown
    verdict: str = ""  # the lateness verdict a re-routed copy carries


@dataclass
class BatchCounts:
    """Every consumed offset ends in exactly one of these."""
    delivered: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    rerouted: int = 0  # keyed to the wrong partition; re-sent keyed by user
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    late: int = 0        # of the delivered: LATE and HISTORICAL ones
    historical: int = 0

    def count_lateness(self, verdict: str) -> None:
        if verdict == LATE:
            self.late += 1
        elif verdict == HISTORICAL:
            self.historical += 1

    def count_dead_letter(self, reason: str) -> None:
        self.dead_lettered += 1
        self.dead_letters_by_reason[reason] = self.dead_letters_by_reason.get(reason, 0) + 1

    @property
    def consumed(self) -> int:
        return self.delivered + self.dead_lettered + self.duplicates + self.rerouted

    def add(self, other: "BatchCounts") -> None:
        self.delivered += other.delivered
        self.dead_lettered += other.dead_lettered
        self.duplicates += other.duplicates
        self.rerouted += other.rerouted
        self.late += other.late
        self.historical += other.historical
        for reason, n in other.dead_letters_by_reason.items():
            self.dead_letters_by_reason[reason] = self.dead_letters_by_reason.get(reason, 0) + n
