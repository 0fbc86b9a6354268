"""Routine messages of Faust, aiokafka and the worker itself, said at INFO instead of WARNING or
ERROR: an operator reading the worker's log at its default level sees only what needs a person.

Each entry is (logger name, the start of the message's format string). All of them are waits the
worker gets through by itself, and counted where it matters (/stats/: offset_holes, lag)."""
from __future__ import annotations

import logging

ROUTINE = (
    ("faust.transport.producer", "producer buffer full"),              # backpressure while a batch is sent
    ("aiokafka.cluster", "Topic %s not found in cluster metadata"),    # the pipeline's topics being created
    ("aiokafka.consumer.group_coordinator", "Group Coordinator Request failed"),  # a coordinator being elected
    ("aiokafka.consumer.group_coordinator", "OffsetCommit failed before join"),
    ("streams.runtime.continuity", "%s partition %d: offsets %d..%d were not delivered"),  # read again, counted
)


class _Routine(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO and isinstance(record.msg, str) and record.msg.startswith(self.starts):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def say_routine_at_info() -> None:
    """Install the filters (idempotent)."""
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, start in ROUTINE:
        by_logger[name] = by_logger.get(name, ()) + (start,)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Routine) for f in logger.filters):
            logger.addFilter(_Routine(starts))
