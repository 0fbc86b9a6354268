"""Alert rules on crafted streams: each (rule, app) fires once and resolves once, in event time."""
from __future__ import annotations

from collections import defaultdict

import pytest

from streams.stages.alerts import (DEFAULT_RULES_PATH, AlertEngine, Rule, StreamClock, change_pct, day_of, load_rules,
                            newest_complete_day, parse_rules)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MONDAY_MS = 1_709_510_400_000  # 2024-03-04T00:00:00Z


def at(day: int, hour: float = 0.0) -> int:
    return MONDAY_MS + day * DAY_MS + int(hour * HOUR_MS)


def day_iso(day: int) -> str:
    return f"2024-03-{4 + day:02d}"


class Stream:
    """Plays events through an engine the way the worker does: DAU changes first, then event time."""

    def __init__(self, engine: AlertEngine) -> None:
        self.engine = engine
        self.day_users: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.alerts = []

    def event(self, app: str, epoch_ms: int, user: str) -> list:
        new = []
        for key_app in (app, "*"):
            users = self.day_users[(key_app, day_of(epoch_ms))]
            if user not in users:
                users.add(user)
                new += self.engine.on_metric("dau", key_app, day_of(epoch_ms), len(users), epoch_ms)
        new += self.engine.on_event_time(app, epoch_ms)
        self.alerts += new
        return new

    def day(self, app: str, day: int, users: int, hours: int = 10) -> list:
        """`users` distinct users of `app` arriving over `hours` hours from 08:00 of `day`."""
        times = sorted(at(day, 8 + n % hours + n / 1000) for n in range(users))
        new = []
        for n, epoch_ms in enumerate(times):
            new += self.event(app, epoch_ms, f"u{n}")
        return new


def states(alerts) -> list[tuple[str, str, str]]:
    return [(a.rule, a.app, a.state) for a in alerts]


# ---------------------------------------------------------------- loading rules

def test_bundled_rules_load():
    rules = load_rules(DEFAULT_RULES_PATH)
    assert {rule.kind for rule in rules} == {"threshold", "relative_change", "no_data"}
    assert load_rules(None) == []


def test_rules_file_with_a_bare_list(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("- {name: quiet, kind: no_data, app: amundsen, minutes: 30}\n")
    assert load_rules(path) == [Rule(name="quiet", kind="no_data", app="amundsen", minutes=30)]


@pytest.mark.parametrize("entry, complaint", [
    ({"kind": "threshold", "app": "a", "below": 1}, "'name' is required"),
    ({"name": "r", "kind": "treshold", "app": "a", "below": 1}, "kind 'treshold'"),
    ({"name": "r", "kind": "threshold", "app": "a"}, "exactly one of 'below' or 'above'"),
    ({"name": "r", "kind": "threshold", "app": "a", "below": 1, "above": 5}, "exactly one"),
    ({"name": "r", "kind": "threshold", "app": "a", "bellow": 1}, "unknown field(s) for a threshold rule: bellow"),
    ({"name": "r", "kind": "threshold", "app": "a", "below": "ten"}, "'below' must be a number"),
    ({"name": "r", "kind": "threshold", "app": "a", "below": 1, "metric": "dauu"}, "metric 'dauu'"),
    ({"name": "r", "kind": "threshold", "app": "a", "below": 1, "on": "today"}, "on 'today'"),
    ({"name": "r", "kind": "relative_change", "app": "a"}, "needs 'min_change_pct'"),
    ({"name": "r", "kind": "no_data", "app": "a", "minutes": 0}, "'minutes' greater than 0"),
    ({"name": "r", "kind": "no_data", "app": "a", "minutes": 5, "below": 3}, "unknown field(s)"),
])
def test_bad_rule_is_named_in_the_error(entry, complaint):
    ok = {"name": "fine", "kind": "no_data", "app": "a", "minutes": 5}
    with pytest.raises(ValueError) as error:
        parse_rules({"rules": [ok, entry]}, source="alerts.yaml")
    assert error.value.args[0].startswith("alerts.yaml: rule #2")
    assert complaint in error.value.args[0]
    if "name" in entry:
        assert "'r'" in error.value.args[0]


def test_duplicate_rule_names_are_refused():
    rule = {"name": "twice", "kind": "no_data", "app": "a", "minutes": 5}
    with pytest.raises(ValueError, match="rule #2 'twice': another rule already has this name"):
        parse_rules([rule, rule])


def test_broken_yaml_names_the_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [name: x\n")
    with pytest.raises(ValueError, match="rules.yaml: not valid YAML"):
        load_rules(path)


# ---------------------------------------------------------------- pure parts

@pytest.mark.parametrize("watermark, grace, expected", [
    (at(1, 0), 0, "2024-03-04"),
    (at(1, 0.1), 10, "2024-03-03"),   # 6 minutes past midnight, inside the grace period
    (at(1, 0.5), 10, "2024-03-04"),
    (at(1, 23.9), 10, "2024-03-04"),
])
def test_newest_complete_day(watermark, grace, expected):
    assert newest_complete_day(watermark, grace) == expected


@pytest.mark.parametrize("value, baseline, expected", [(50, 100, -50.0), (120, 100, 20.0), (5, 0, None)])
def test_change_pct(value, baseline, expected):
    assert change_pct(value, baseline) == expected


# ---------------------------------------------------------------- crafted streams

def test_threshold_fires_and_resolves_once_on_complete_days():
    engine = AlertEngine([Rule(name="dau_low", kind="threshold", app="amundsen", below=10)])
    stream = Stream(engine)
    # day 0 reaches 12 users, but starts at 1: a live judgement would have fired in the morning
    assert stream.day("amundsen", 0, users=12) == []
    assert stream.day("amundsen", 1, users=3) == []          # low, but day 1 is not over yet
    fired = stream.day("amundsen", 2, users=15)               # day 2 begins: day 1 is complete
    assert states(fired) == [("dau_low", "amundsen", "firing")]
    assert fired[0].value == 3 and fired[0].threshold == 10
    assert "2024-03-05" in fired[0].message
    assert fired[0].at_epoch_ms >= at(2)
    assert engine.state()["firing"][0]["rule"] == "dau_low"
    stream.day("amundsen", 3, users=14)                       # day 2 (15 users) completes
    assert states(stream.alerts) == [("dau_low", "amundsen", "firing"), ("dau_low", "amundsen", "resolved")]
    assert stream.alerts[1].value == 15
    assert engine.state()["firing"] == []


def test_threshold_stays_quiet_while_the_state_holds():
    engine = AlertEngine([Rule(name="dau_low", kind="threshold", app="*", below=10)])
    stream = Stream(engine)
    for day in range(6):
        stream.day("code-search", day, users=2)
    assert states(stream.alerts) == [("dau_low", "*", "firing")]


def test_live_threshold_fires_when_crossed_and_resolves_on_the_next_day():
    engine = AlertEngine([Rule(name="busy", kind="threshold", app="amundsen", above=5, on="live")])
    stream = Stream(engine)
    stream.day("amundsen", 0, users=9)
    assert states(stream.alerts) == [("busy", "amundsen", "firing")]
    assert stream.alerts[0].value == 6
    stream.day("amundsen", 1, users=3)
    assert states(stream.alerts) == [("busy", "amundsen", "firing"), ("busy", "amundsen", "resolved")]


def test_relative_change_against_the_same_weekday_last_week():
    rule = Rule(name="drop", kind="relative_change", app="amundsen", min_change_pct=-30)
    engine = AlertEngine([rule])
    stream = Stream(engine)
    for day in range(7):
        stream.day("amundsen", day, users=10)
    stream.day("amundsen", 7, users=6)   # -40% vs day 0
    stream.day("amundsen", 8, users=9)   # -10% vs day 1
    stream.day("amundsen", 9, users=10)
    assert states(stream.alerts) == [("drop", "amundsen", "firing"), ("drop", "amundsen", "resolved")]
    fired, resolved = stream.alerts
    assert fired.value == -40.0 and fired.threshold == -30
    assert "vs 10 on 2024-03-04" in fired.message
    assert resolved.value == -10.0


def test_relative_change_without_a_baseline_says_nothing():
    engine = AlertEngine([Rule(name="drop", kind="relative_change", app="amundsen", min_change_pct=-30)])
    stream = Stream(engine)
    stream.day("amundsen", 7, users=1)
    stream.day("amundsen", 8, users=1)
    assert stream.alerts == []


def test_no_data_fires_and_resolves_once_in_stream_time():
    engine = AlertEngine([Rule(name="silent", kind="no_data", app="code-search", minutes=30)])
    stream = Stream(engine)
    stream.event("code-search", at(0, 9.0), "a")
    for minute in range(0, 120, 5):      # amundsen keeps the stream moving for two hours
        stream.event("amundsen", at(0, 9.0) + minute * 60_000, "b")
    assert states(stream.alerts) == [("silent", "code-search", "firing")]
    assert stream.alerts[0].at_epoch_ms == at(0, 9.5)
    stream.event("code-search", at(0, 11.0), "a")
    stream.event("code-search", at(0, 11.1), "a")
    assert states(stream.alerts) == [("silent", "code-search", "firing"), ("silent", "code-search", "resolved")]


def test_no_data_for_every_app_seen():
    engine = AlertEngine([Rule(name="silent", kind="no_data", app="*", minutes=60)])
    stream = Stream(engine)
    stream.event("a", at(0, 9), "u")
    stream.event("b", at(0, 9), "u")
    stream.event("a", at(0, 10.5), "u")
    assert states(stream.alerts) == [("silent", "b", "firing")]
    assert engine.state()["firing"][0]["app"] == "b"


def test_no_data_for_an_app_never_seen_counts_from_the_stream_start():
    engine = AlertEngine([Rule(name="silent", kind="no_data", app="bi", minutes=60)])
    stream = Stream(engine)
    stream.event("a", at(0, 9), "u")
    stream.event("a", at(0, 9.9), "u")
    assert stream.alerts == []
    stream.event("a", at(0, 10), "u")
    assert states(stream.alerts) == [("silent", "bi", "firing")]


def test_old_stream_replayed_is_judged_by_its_own_clock():
    """Weeks-old events: nothing depends on the wall clock, and a replay gives the same alerts."""
    rules = [Rule(name="dau_low", kind="threshold", app="amundsen", below=5),
             Rule(name="silent", kind="no_data", app="amundsen", minutes=600)]
    runs = []
    for _ in range(2):
        stream = Stream(AlertEngine(rules))
        for day, users in enumerate([8, 2, 8]):
            stream.day("amundsen", day, users=users)
        stream.event("other", at(3, 12), "x")
        runs.append([(a.rule, a.state, a.at_epoch_ms, a.value) for a in stream.alerts])
    assert runs[0] == runs[1]
    assert [(rule, state) for rule, state, _, _ in runs[0]] == [
        ("dau_low", "firing"), ("dau_low", "resolved"), ("silent", "firing")]


def test_a_late_correction_of_a_judged_day_resolves_the_alert():
    engine = AlertEngine([Rule(name="dau_low", kind="threshold", app="amundsen", below=10)])
    stream = Stream(engine)
    stream.day("amundsen", 0, users=12)
    stream.day("amundsen", 1, users=9)
    stream.day("amundsen", 2, users=12)
    assert states(stream.alerts) == [("dau_low", "amundsen", "firing")]
    # two late events for day 1 arrive on day 2 (within the allowed lateness)
    resolved = stream.event("amundsen", at(1, 20), "late-1") + stream.event("amundsen", at(1, 21), "late-2")
    assert states(resolved) == [("dau_low", "amundsen", "resolved")]
    assert resolved[0].value == 10


def test_a_day_watched_whole_without_events_counts_as_zero_users():
    engine = AlertEngine([Rule(name="dau_low", kind="threshold", app="bi", below=1)])
    stream = Stream(engine)
    stream.event("amundsen", at(0), "u")   # the stream starts at midnight: day 0 is watched whole
    stream.day("amundsen", 0, users=3)
    stream.day("amundsen", 1, users=3)
    assert states(stream.alerts) == [("dau_low", "bi", "firing")]
    assert stream.alerts[0].value == 0


def test_a_day_watched_only_in_part_is_not_assumed_empty():
    engine = AlertEngine([Rule(name="dau_low", kind="threshold", app="bi", below=1)])
    stream = Stream(engine)
    stream.day("amundsen", 0, users=3)      # the engine starts at 08:00: bi may have had users before
    stream.event("amundsen", at(1, 9), "u")
    assert stream.alerts == []


def test_a_restarted_engine_resolves_what_was_firing_instead_of_firing_again():
    rules = [Rule(name="dau_low", kind="threshold", app="amundsen", below=10)]
    before = Stream(AlertEngine(rules))
    before.day("amundsen", 0, users=3)
    before.day("amundsen", 1, users=3)
    assert states(before.alerts) == [("dau_low", "amundsen", "firing")]

    restarted = AlertEngine(rules)
    restarted.restore(before.alerts)
    after = Stream(restarted)
    after.event("amundsen", at(2), "u")      # watched whole from here on
    after.day("amundsen", 2, users=4)
    after.day("amundsen", 3, users=12)
    after.day("amundsen", 4, users=12)
    assert states(after.alerts) == [("dau_low", "amundsen", "resolved")]


def test_stream_clock_is_the_slowest_partition_that_is_not_idle():
    clock = StreamClock()
    assert clock.now_ms() is None
    clock.advance("0", 1_000)
    clock.advance("1", 5_000)
    clock.advance("0", 900)  # a partition's watermark never goes back
    assert clock.now_ms() == 1_000
    clock.mark_idle("0")  # caught up and quiet: no longer holds the clock back
    assert clock.now_ms() == 5_000
    clock.mark_idle("1")
    assert clock.now_ms() == 5_000  # all idle: the newest counts
    clock.advance("0", 2_000)  # data again: it counts again
    assert clock.now_ms() == 2_000
