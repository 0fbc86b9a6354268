"""Log lines pass the same policy as stored rows."""
from __future__ import annotations

import logging

from streams.stages.scrub.scrubber import Scrubber

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- logs


class ScrubLogFilter(logging.Filter):
    """Scrubs every log record's message (and formatted traceback) before any handler writes it."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed, audit = self.scrubber.scrub_text(message, "log")
        if audit:
            record.msg, record.args = scrubbed, ()  # () not None: other handlers format it again
        if record.exc_info and not record.exc_text:
            record.exc_text = self.scrubber.scrub_text(logging.Formatter().formatException(record.exc_info), "log")[0]
        return True


def scrub_logs(scrubber: Scrubber, logger: logging.Logger | None = None) -> None:
    """Attach a ScrubLogFilter to every handler of `logger` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(ScrubLogFilter(scrubber))
