"""Batches of the input on their way to being durable: steps through the stages accumulate into a
pending batch, cut at an insert's worth of rows or at its age, then written and acked together."""
from __future__ import annotations

from dataclasses import dataclass, field

from streams.contract import DeadLetter
from streams.stages.flow import PartitionState
from streams.stages.outcome import BatchCounts


@dataclass
class StageTimes:
    """Time the actions agent spends in the stages (unpack, validate to count) on the event loop's
    thread: its CPU and wall clock. Beside the sink's insert times, where a worker's time goes."""
    events: int = 0
    cpu_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class PendingBatch:
    """Steps of the input that went through the stages and wait to be made durable together: rows
    accumulate across steps up to one insert's worth, whatever the steps' sizes in messages."""
    started: float = 0.0                                      # monotonic time of its first step
    events: list = field(default_factory=list)                # Kafka records, committed once durable
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (first, last) offset
    columns: dict[str, list] = field(default_factory=dict)   # the rows for user_actions, column by column
    row_count: int = 0
    letters: list[DeadLetter] = field(default_factory=list)
    reroutes: list[tuple[bytes, bytes, int, list]] = field(default_factory=list)
    corrections: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # partition -> (app, day) to recount
    states: dict[int, PartitionState] = field(default_factory=dict)  # whose changes to persist
    metric_counts: dict[tuple, int] = field(default_factory=dict)    # (partition, metric, app, day) -> latest
    progress: dict[int, dict] = field(default_factory=dict)          # partition -> watermark etc., latest
    counts: BatchCounts = field(default_factory=BatchCounts)

    def add_rows(self, columns: dict[str, list]) -> None:
        """Add a step's rows. The first step's columns are copied: a step may hold one list under two
        names (`ts` and `start_epoch_ms`), which extending in place would grow twice."""
        if not self.columns:
            self.columns = {name: list(values) for name, values in columns.items()}
        else:
            for name, values in columns.items():
                self.columns[name].extend(values)
        self.row_count += len(columns["event_id"]) if columns else 0


@dataclass
class DurableWrite:
    """A pending batch at the moment it is cut: what its flush writes and sends."""
    batch: PendingBatch
    sends: list  # futures of changelog writes, made when the batch was cut
    partial: dict

def record_bytes(record) -> int:
    return len(record.value or b"")


def steps_by_size(records: list, step_bytes: int, size_of=record_bytes) -> list[list]:
    """Consecutive runs of `records`, each ending at the first one that brings it to `step_bytes`."""
    steps, step, size = [], [], 0
    for record in records:
        step.append(record)
        size += size_of(record)
        if size >= step_bytes:
            steps.append(step)
            step, size = [], 0
    if step:
        steps.append(step)
    return steps

