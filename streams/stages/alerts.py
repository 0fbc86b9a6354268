"""Alerts: active-users values and the stream's event time in, firing and resolving `Alert`s out.

Pure: no Kafka, no clock. "Now" is the watermark, the newest event time seen across all apps, so
replaying weeks-old data raises exactly the alerts it raised live.

Rule kinds (a YAML file the user edits; see streams/policies/alerts.yaml):
  threshold        metric of an app below (or above) N
  relative_change  metric of an app on day D vs day D-7, change in % below min_change_pct
                   (or above max_change_pct)
  no_data          no events from an app for `minutes` of stream time

Threshold and relative rules judge day D only once it is complete (the watermark has passed the
next midnight plus `grace_minutes`), so a DAU that is low because the day has just begun does not
fire every morning; `on: live` judges the newest day's value as it changes instead.
Each (rule, app) fires once when its condition becomes true and resolves once when it becomes
false; nothing is repeated while the state holds.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from streams.stages.active_users import ALL_APPS, METRICS
from streams.contract import Alert

THRESHOLD, RELATIVE_CHANGE, NO_DATA = "threshold", "relative_change", "no_data"
KINDS = (THRESHOLD, RELATIVE_CHANGE, NO_DATA)
COMPLETE_DAY, LIVE = "complete_day", "live"
FIRING, RESOLVED = "firing", "resolved"
# ALL_APPS ("*"): in metric rules, the all-apps total; in no_data rules, every app seen

DAY_MS = 86_400_000
MINUTE_MS = 60_000
KEEP_DAYS = 14            # values this far behind the watermark are forgotten (D-7 baselines + lateness)
MAX_CATCH_UP_DAYS = 7     # a watermark jumping many days judges only the newest few

DEFAULT_RULES_PATH = Path(__file__).resolve().parent.parent / "policies" / "alerts.yaml"


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    app: str
    metric: str = "dau"
    below: float | None = None
    above: float | None = None
    min_change_pct: float | None = None
    max_change_pct: float | None = None
    minutes: float | None = None
    on: str = COMPLETE_DAY
    grace_minutes: float = 10.0


# ---------------------------------------------------------------- loading rules

_COMMON_KEYS = {"name", "kind", "app"}
_KEYS_BY_KIND = {
    THRESHOLD: {"metric", "below", "above", "on", "grace_minutes"},
    RELATIVE_CHANGE: {"metric", "min_change_pct", "max_change_pct", "on", "grace_minutes"},
    NO_DATA: {"minutes"},
}
_NUMBER_KEYS = {"below", "above", "min_change_pct", "max_change_pct", "minutes", "grace_minutes"}


def load_rules(path: str | Path | None) -> list[Rule]:
    """Rules from a YAML file (a list, or a mapping with `rules:`); None means no rules."""
    if path is None:
        return []
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(document, source=str(path))


def parse_rules(document, source: str = "alert rules") -> list[Rule]:
    """Validate the decoded YAML; a ValueError names the file and the rule at fault."""
    if document is None:
        return []
    entries = document.get("rules") if isinstance(document, dict) else document
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a list of rules (under 'rules:')")
    rules: list[Rule] = []
    for position, entry in enumerate(entries, 1):
        name = entry.get("name") if isinstance(entry, dict) else None
        label = f"{source}: rule #{position}" + (f" {name!r}" if name else "")
        try:
            rule = parse_rule(entry)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
        if any(earlier.name == rule.name for earlier in rules):
            raise ValueError(f"{label}: another rule already has this name")
        rules.append(rule)
    return rules


def parse_rule(entry) -> Rule:
    if not isinstance(entry, dict):
        raise ValueError(f"expected a mapping of rule fields, got {entry!r}")
    for key in ("name", "kind", "app"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise ValueError(f"'{key}' is required (a non-empty string)")
    kind = entry["kind"]
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    unknown = set(entry) - _COMMON_KEYS - _KEYS_BY_KIND[kind]
    if unknown:
        raise ValueError(f"unknown field(s) for a {kind} rule: {', '.join(sorted(map(str, unknown)))}")
    for key in _NUMBER_KEYS & set(entry):
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"'{key}' must be a number, got {value!r}")
    if entry.get("metric", "dau") not in METRICS:
        raise ValueError(f"metric {entry['metric']!r} is not one of {', '.join(METRICS)}")
    if entry.get("on", COMPLETE_DAY) not in (COMPLETE_DAY, LIVE):
        raise ValueError(f"on {entry['on']!r} must be '{COMPLETE_DAY}' or '{LIVE}'")
    if entry.get("grace_minutes", 0) < 0:
        raise ValueError("'grace_minutes' must not be negative")
    if kind == THRESHOLD and ("below" in entry) == ("above" in entry):
        raise ValueError("a threshold rule needs exactly one of 'below' or 'above'")
    if kind == RELATIVE_CHANGE and not {"min_change_pct", "max_change_pct"} & set(entry):
        raise ValueError("a relative_change rule needs 'min_change_pct' (e.g. -30) or 'max_change_pct'")
    if kind == NO_DATA and not entry.get("minutes", 0) > 0:
        raise ValueError("a no_data rule needs 'minutes' greater than 0")
    known = {f.name for f in fields(Rule)}
    return Rule(**{key: value for key, value in entry.items() if key in known})


# ---------------------------------------------------------------- pure judgements

def day_of(epoch_ms: int) -> str:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC).date().isoformat()


def day_start_ms(day: str) -> int:
    return int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.UTC).timestamp() * 1000)


def add_days(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()


def newest_complete_day(watermark_ms: int, grace_minutes: float) -> str:
    """Day D is complete once the watermark has passed midnight after D plus the grace period."""
    return add_days(day_of(watermark_ms - int(grace_minutes * MINUTE_MS)), -1)


def days_after(first_exclusive: str, last_inclusive: str) -> list[str]:
    start = dt.date.fromisoformat(first_exclusive)
    count = (dt.date.fromisoformat(last_inclusive) - start).days
    return [(start + dt.timedelta(days=n)).isoformat() for n in range(1, count + 1)]


def threshold_breached(rule: Rule, value: float) -> bool:
    return value < rule.below if rule.below is not None else value > rule.above


def change_pct(value: float, baseline: float) -> float | None:
    """Change from baseline in percent; None when there is no baseline to compare with."""
    if not baseline:
        return None
    return (value - baseline) / baseline * 100.0


def change_breached(rule: Rule, pct: float) -> bool:
    return ((rule.min_change_pct is not None and pct < rule.min_change_pct)
            or (rule.max_change_pct is not None and pct > rule.max_change_pct))


def rule_threshold(rule: Rule) -> float:
    """The number the rule compares against, as carried in `Alert.threshold`."""
    if rule.kind == THRESHOLD:
        return rule.below if rule.below is not None else rule.above
    if rule.kind == RELATIVE_CHANGE:
        return rule.min_change_pct if rule.min_change_pct is not None else rule.max_change_pct
    return rule.minutes


def describe_limit(rule: Rule) -> str:
    if rule.kind == THRESHOLD:
        return f"below {rule.below:g}" if rule.below is not None else f"above {rule.above:g}"
    limits = [f"below {rule.min_change_pct:+g}%" if rule.min_change_pct is not None else "",
              f"above {rule.max_change_pct:+g}%" if rule.max_change_pct is not None else ""]
    return " or ".join(limit for limit in limits if limit)


def app_label(app: str) -> str:
    return "all apps" if app == ALL_APPS else app


def iso_time(epoch_ms: int) -> str:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the stream's clock

class StreamClock:
    """The stream's event time for alerting, from the input partitions' watermarks: the slowest
    partition that still has data to deliver, since a day is complete only when all of them have
    passed it. A partition reported idle (caught up, nothing new for a while) stops holding the
    clock back until it reports progress again; with every partition idle, the newest counts."""

    def __init__(self) -> None:
        self.watermarks: dict[str, int] = {}
        self.idle: set[str] = set()

    def advance(self, partition: str, watermark_ms: int) -> None:
        self.watermarks[partition] = max(watermark_ms, self.watermarks.get(partition, 0))
        self.idle.discard(partition)

    def mark_idle(self, partition: str) -> None:
        self.idle.add(partition)

    def now_ms(self) -> int | None:
        active = [ms for partition, ms in self.watermarks.items() if partition not in self.idle]
        if active:
            return min(active)
        return max(self.watermarks.values(), default=None)


# ---------------------------------------------------------------- the engine

class AlertEngine:
    """Remembers recent metric values, each app's newest event time and which alerts are firing.

    Only `on_event_time` moves the watermark. Per batch, call `on_metric` for the batch's value
    changes before `on_event_time`, so a day is judged complete with its final value.
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = list(rules)
        self._metric_rules = [r for r in self.rules if r.kind in (THRESHOLD, RELATIVE_CHANGE)]
        self._no_data_rules = [r for r in self.rules if r.kind == NO_DATA]
        self._values: dict[tuple[str, str, str], int] = {}   # (metric, app, day) -> latest value
        self._newest_day: dict[tuple[str, str], str] = {}    # (metric, app) -> newest day with a value
        self._last_event_ms: dict[str, int] = {}              # app -> newest event time
        self._watermark_ms: int | None = None
        self._first_watermark_ms: int | None = None
        self._judged_day: dict[str, str] = {}                 # complete_day rule -> newest day judged
        self._firing: dict[tuple[str, str], Alert] = {}       # (rule, app) -> firing alert, latest value

    # -- inputs

    def on_metric(self, metric: str, app: str, day: str, value: int, now_ms: int) -> list[Alert]:
        """Record an active-users value; judge live rules, and complete days it corrects."""
        self._values[(metric, app, day)] = value
        newest = max(self._newest_day.get((metric, app), day), day)
        self._newest_day[(metric, app)] = newest
        alerts: list[Alert] = []
        for rule in self._metric_rules:
            if rule.metric != metric or rule.app != app:
                continue
            judged = newest if rule.on == LIVE else self._judged_day.get(rule.name)
            if judged is None:
                continue  # the day is still in progress; judged when the watermark passes it
            if day == judged or (rule.kind == RELATIVE_CHANGE and day == add_days(judged, -7)):
                alerts += self._judge_day(rule, judged, now_ms)
        return alerts

    def on_event_time(self, app: str, event_ms: int) -> list[Alert]:
        """Note the newest event time of an app; move the watermark and judge what it completes."""
        self._last_event_ms[app] = max(self._last_event_ms.get(app, event_ms), event_ms)
        if self._watermark_ms is None:
            self._first_watermark_ms = self._watermark_ms = event_ms
        elif event_ms > self._watermark_ms:
            if day_of(event_ms) != day_of(self._watermark_ms):
                self._forget_before(add_days(day_of(event_ms), -KEEP_DAYS))
            self._watermark_ms = event_ms
        return self._judge_complete_days() + self._judge_no_data()

    def restore(self, latest_alerts: Iterable[Alert]) -> None:
        """Take back which alerts are firing (e.g. the last alert per key read from the alerts topic
        after a restart), so they resolve later instead of firing a second time."""
        rule_names = {rule.name for rule in self.rules}
        for alert in latest_alerts:
            key = (alert.rule, alert.app)
            if alert.state == FIRING and alert.rule in rule_names:
                self._firing[key] = alert
            else:
                self._firing.pop(key, None)

    # -- output for the worker's JSON endpoint

    def state(self) -> dict:
        firing = [{"rule": alert.rule, "app": alert.app, "value": alert.value, "threshold": alert.threshold,
                   "message": alert.message, "since_epoch_ms": alert.at_epoch_ms}
                  for alert in sorted(self._firing.values(), key=lambda a: (a.rule, a.app))]
        return {"watermark_epoch_ms": self._watermark_ms, "rules": [rule.name for rule in self.rules],
                "firing": firing}

    # -- judging

    def _judge_complete_days(self) -> list[Alert]:
        alerts: list[Alert] = []
        for rule in self._metric_rules:
            if rule.on != COMPLETE_DAY:
                continue
            newest = newest_complete_day(self._watermark_ms, rule.grace_minutes)
            judged = self._judged_day.get(rule.name)
            if judged == newest:
                continue
            if judged is None:
                # first judgement: every complete day with values, so a backfill that arrives in one
                # batch alerts as it would have live
                known = [day for metric, app, day in self._values if (metric, app) == (rule.metric, rule.app)]
                judged = add_days(min(min(known, default=newest), newest), -1)
            days = days_after(judged, newest)[-MAX_CATCH_UP_DAYS:]
            self._judged_day[rule.name] = newest
            for day in days:
                alerts += self._judge_day(rule, day, self._watermark_ms)
        return alerts

    def _judge_day(self, rule: Rule, day: str, at_ms: int) -> list[Alert]:
        value = self._value(rule.metric, rule.app, day)
        if value is None:
            return []  # unknown: keep the current state
        what = f"{rule.metric} of {app_label(rule.app)} on {day}{' so far' if rule.on == LIVE else ''}"
        if rule.kind == THRESHOLD:
            breached = threshold_breached(rule, value)
            message = f"{what} is {value:g}, {'' if breached else 'no longer '}{describe_limit(rule)}"
            return self._set_state(rule, rule.app, breached, value, message, at_ms)
        week_before = add_days(day, -7)
        baseline = self._value(rule.metric, rule.app, week_before)
        pct = None if baseline is None else change_pct(value, baseline)
        if pct is None:
            return []
        breached = change_breached(rule, pct)
        message = (f"{what} is {value:g}, {pct:+.1f}% vs {baseline:g} on {week_before}, "
                   f"{'' if breached else 'no longer '}{describe_limit(rule)}")
        return self._set_state(rule, rule.app, breached, round(pct, 2), message, at_ms)

    def _judge_no_data(self) -> list[Alert]:
        alerts: list[Alert] = []
        for rule in self._no_data_rules:
            apps = sorted(self._last_event_ms) if rule.app == ALL_APPS else [rule.app]
            for app in apps:
                # an app never seen has been silent since the stream began
                last_ms = self._last_event_ms.get(app, self._first_watermark_ms)
                silent_minutes = (self._watermark_ms - last_ms) / MINUTE_MS
                breached = silent_minutes >= rule.minutes
                message = (f"no events from {app} for {silent_minutes:.0f} min of stream time "
                           f"(limit {rule.minutes:g} min), last at {iso_time(last_ms)}" if breached
                           else f"events from {app} again, latest at {iso_time(last_ms)}")
                alerts += self._set_state(rule, app, breached, round(silent_minutes, 2), message,
                                          self._watermark_ms)
        return alerts

    def _set_state(self, rule: Rule, app: str, breached: bool, value: float, message: str,
                   at_ms: int) -> list[Alert]:
        key = (rule.name, app)
        firing = self._firing.get(key)
        if breached and firing is None:
            alert = Alert(rule=rule.name, state=FIRING, app=app, value=value, threshold=rule_threshold(rule),
                          message=message, at_epoch_ms=at_ms)
            self._firing[key] = alert
            return [alert]
        if breached:  # still firing: keep the latest value for state(), say nothing
            self._firing[key] = Alert(rule=rule.name, state=FIRING, app=app, value=value,
                                      threshold=firing.threshold, message=message,
                                      at_epoch_ms=firing.at_epoch_ms)
            return []
        if firing is not None:
            del self._firing[key]
            return [Alert(rule=rule.name, state=RESOLVED, app=app, value=value, threshold=firing.threshold,
                          message=message, at_epoch_ms=at_ms)]
        return []

    def _value(self, metric: str, app: str, day: str) -> int | None:
        value = self._values.get((metric, app, day))
        if value is None and metric == "dau" and self._saw_whole_day(day):
            return 0  # every DAU change is reported, so a day watched from its start without one had none
        return value

    def _saw_whole_day(self, day: str) -> bool:
        return (self._first_watermark_ms is not None and self._first_watermark_ms <= day_start_ms(day)
                and self._watermark_ms >= day_start_ms(add_days(day, 1)))

    def _forget_before(self, oldest_kept_day: str) -> None:
        for key in [key for key in self._values if key[2] < oldest_kept_day]:
            del self._values[key]
