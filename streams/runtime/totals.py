"""The totals: every input partition's active-user counts summed into exact totals, published to the
metric topic at most once per key per interval, with the alerts they raise.

The partials topic has one partition, so one worker owns every total and the alert rules see them
all. A partial message carries, for each input partition it speaks for, that partition's changed
counts and its progress (watermark, newest event per app), or that it has gone idle.
"""
from __future__ import annotations

from streams.contract import MetricUpdate
from streams.runtime.kafka_internals import table_items, table_set
from streams.stages.active_users import day_iso, day_ordinal_of, merge_partition_count
from streams.stages.alerts import StreamClock


class Totals:
    def __init__(self, table, alerts) -> None:
        self.table = table    # the Faust table: "<metric>|<app>|<day>" -> per-partition counts, total, version
        self.alerts = alerts  # streams.stages.alerts.AlertEngine
        self.stream_clock = StreamClock()  # the input partitions' event time, for alerts
        self.newest_event_ms: dict[str, int] = {}  # app -> its newest event time, for alerts
        self.pending_metrics: dict[str, dict] = {}
        self.pending_alerts: list = []
        self.metrics_emitted = 0
        self._current_day: int | None = None  # the stream's current day: its newest DAU's

    @property
    def current_day(self) -> int:
        """The newest day any event has been counted on: no value is published or shown for a day
        after it (a window's count exists ahead of time; the day it ends on has not happened yet).
        Taken from the table on first use, so a restarted worker knows it before any new partial."""
        if self._current_day is None:
            days = [key.split("|")[2] for key, _ in table_items(self.table) if key.startswith("dau|")]
            self._current_day = day_ordinal_of(max(days)) if days else 0
        return self._current_day

    def _advance_to(self, day: int) -> None:
        """Days that have now happened publish the values they already hold."""
        previous = self.current_day
        if day <= previous:
            return
        self._current_day = day
        for key, entry in table_items(self.table):
            metric, app, key_day = key.split("|")
            if previous < day_ordinal_of(key_day) <= day:
                self.pending_metrics[key] = entry
                self.pending_alerts.extend(self.alerts.on_metric(metric, app, key_day, entry["value"],
                                                                 entry.get("updated_ms", 0)))

    def apply(self, partial: dict, changelog_partition: int) -> list:
        """Apply one partial message; returns the changelog sends to await. Partials apply
        idempotently (each count is a partition's latest), so a re-read is harmless."""
        progress = partial["partitions"]  # JSON keys: partition numbers as strings
        for partition, info in progress.items():
            if info.get("idle"):
                self.stream_clock.mark_idle(partition)
                continue
            self.stream_clock.advance(partition, info["watermark_ms"])
            for app, ms in info["newest_event_ms"].items():
                self.newest_event_ms[app] = max(ms, self.newest_event_ms.get(app, 0))
        now_ms = max((p["watermark_ms"] for p in progress.values() if not p.get("idle")), default=0)
        corrected = partial.get("correction", False)  # recounted from the store
        self._advance_to(max((day for _, metric, _, day, _ in partial["counts"] if metric == "dau"),
                             default=0))
        sends = []
        for partition, metric, app, day, count in partial["counts"]:
            partition = str(partition)
            key = f"{metric}|{app}|{day_iso(day)}"
            entry = self.table.get(key) or {"parts": {}, "value": 0, "version": 0}
            if not merge_partition_count(entry["parts"], partition, count):
                continue
            total = entry["value"] = sum(entry["parts"].values())
            entry["version"] += 1
            entry["correction"] = corrected or (partition in progress
                                                and day < progress[partition].get("watermark_day", day))
            entry["updated_ms"] = now_ms or entry.get("updated_ms", 0)
            sends.append(table_set(self.table, changelog_partition, key, entry))
            if day <= self.current_day:
                self.pending_metrics[key] = entry
                self.pending_alerts.extend(self.alerts.on_metric(metric, app, day_iso(day), total, now_ms))
        stream_now = self.stream_clock.now_ms()
        if stream_now is not None:
            for app, ms in self.newest_event_ms.items():
                self.pending_alerts.extend(self.alerts.on_event_time(app, min(ms, stream_now)))
        return sends

    async def publish(self, metrics_topic, alerts_topic) -> None:
        """At most one MetricUpdate per key per interval: the latest value wins."""
        pending, self.pending_metrics = self.pending_metrics, {}
        for key, entry in pending.items():
            metric, app, day = key.split("|")
            update = MetricUpdate(metric=metric, app=app, day=day, value=entry["value"], version=entry["version"],
                                  updated_epoch_ms=entry.get("updated_ms", 0), correction=entry.get("correction", False))
            await metrics_topic.send(key=key.encode(), value=update.SerializeToString())
        self.metrics_emitted += len(pending)
        alerts, self.pending_alerts = self.pending_alerts, []
        for alert in alerts:
            await alerts_topic.send(key=f"{alert.rule}|{alert.app}".encode(), value=alert.SerializeToString())

    def current(self, metric: str | None = None, app: str | None = None) -> list[dict]:
        """The exact totals held here, optionally for one metric and app."""
        rows = []
        current = self.current_day
        for key, entry in table_items(self.table):
            m, a, day = key.split("|")
            if (metric and m != metric) or (app and a != app) or day_ordinal_of(day) > current:
                continue
            rows.append({"metric": m, "app": a, "day": day, "value": entry["value"], "version": entry["version"]})
        return sorted(rows, key=lambda r: (r["metric"], r["app"], r["day"]))

