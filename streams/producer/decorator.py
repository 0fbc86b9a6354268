"""The process-wide tracker, `track()` and the Amundsen-style `@action_logging` decorator."""
from __future__ import annotations

from typing import Callable

from streams.producer.arguments import DEFAULT_TOPIC
from streams.producer.tracker import Tracker, _decorate


_default_tracker: Tracker | None = None


def configure(bootstrap: str, app: str, topic: str = DEFAULT_TOPIC, **options) -> Tracker:
    """Make the process-wide tracker used by `track()` and a bare `@action_logging`."""
    global _default_tracker
    if _default_tracker is not None:
        _default_tracker.close(timeout=0)
    _default_tracker = Tracker(bootstrap, app, topic, **options)
    return _default_tracker


def track(command: str, user: str | None = None, /, **properties) -> None:
    """`Tracker.track` on the process-wide tracker; does nothing before `configure()`."""
    tracker = _default_tracker
    if tracker is not None:
        tracker.track(command, user, **properties)


def action_logging(func: Callable | None = None, *, tracker: Tracker | None = None):
    """Amundsen-compatible decorator: `@action_logging`, or `@action_logging(tracker=t)`.

    Without a tracker it uses the one from `configure()` at call time (decorating at import time is
    fine); before `configure()` the function just runs.
    """
    def resolve() -> Tracker | None:
        return tracker if tracker is not None else _default_tracker

    if func is None:
        return lambda f: _decorate(f, resolve)
    return _decorate(func, resolve)
