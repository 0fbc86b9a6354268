"""Producers: the fail-safe SDK (`track`, `@action_logging`, the tracker), `tally publish`, and the
traffic generator. Importable without the worker's stack."""
from streams.producer.decorator import action_logging, configure, track
from streams.producer.tracker import Tracker

__all__ = ["Tracker", "action_logging", "configure", "track"]
