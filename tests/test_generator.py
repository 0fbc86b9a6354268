"""The traffic generator: shape of the traffic, determinism, ground truth, and `tally generate`."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from conftest import read_topic
from streams.contract import UserAction, partition_for_user
from streams.producer.generator import APPS, generate_actions, generate_profiles, ground_truth, partition_key
from streams.producer.publish import parse_lines

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MONDAY = date(2024, 5, 6)


@pytest.fixture(scope="module")
def week() -> list[UserAction]:
    return list(generate_actions(seed=7, start_day=MONDAY, days=7, users=200, events_per_day=3000))


def utc(action: UserAction) -> datetime:
    return datetime.fromtimestamp(action.start_epoch_ms / 1000, timezone.utc)


def kwargs(action: UserAction) -> dict:
    return json.loads(action.keyword_args_json) if action.keyword_args_json else {}


def test_same_seed_same_events_other_seed_other_events():
    first = list(generate_actions(3, MONDAY, 2, 50, 200))
    assert first == list(generate_actions(3, MONDAY, 2, 50, 200))
    assert first != list(generate_actions(4, MONDAY, 2, 50, 200))
    assert generate_profiles(3, 50) == generate_profiles(3, 50)


def test_events_fall_inside_the_days_in_time_order(week):
    days = {utc(a).date() for a in week}
    assert days == {date(2024, 5, d) for d in range(6, 13)}
    assert [a.start_epoch_ms for a in week] == sorted(a.start_epoch_ms for a in week)
    assert all(a.end_epoch_ms >= a.start_epoch_ms for a in week)
    assert len({a.event_id for a in week}) == len(week)


def test_weekdays_and_working_hours_are_busier(week):
    per_day = Counter(utc(a).date() for a in week)
    assert per_day[MONDAY] == 3000 and per_day[date(2024, 5, 11)] == 600  # Saturday: a fifth
    hours = Counter(utc(a).hour for a in week)
    assert sum(hours[h] for h in range(9, 17)) > 3 * sum(hours[h] for h in range(0, 8))


def test_all_apps_present_with_their_naming(week):
    by_app = Counter(a.app for a in week)
    assert set(by_app) == set(APPS)
    commands = {a.app: set() for a in week}
    for a in week:
        commands[a.app].add(a.command)
    assert {"search_table", "_get_table_metadata", "_get_dashboard_metadata", "_log_get_user",
            "_update_table_description", "update_table_tags"} <= commands["amundsen"]
    assert {"SearchSubmitted", "ViewRepogroup:python"} <= commands["code-search"]
    assert {"dashboard.viewed", "query.executed", "chart.created"} <= commands["bi"]
    assert all("." in c for c in commands["bi"])


def test_amundsen_clicks_carry_index_source_and_search_term(week):
    clicks = [a for a in week if a.command == "_get_table_metadata" and kwargs(a)["source"] != "browse"]
    assert clicks
    for click in clicks:
        assert set(kwargs(click)) == {"table_key", "index", "source", "search_term"}
        assert kwargs(click)["source"] in ("search_results", "inline_search")
    indexes = [int(kwargs(a)["index"]) for a in clicks]
    assert sum(i <= 3 for i in indexes) > len(indexes) / 2  # most clicks land near the top
    assert max(indexes) > 3


def test_errors_sessions_and_secrets_for_the_scrub_stage(week):
    error_rate = sum(bool(a.error) for a in week) / len(week)
    assert 0.01 < error_rate < 0.06
    assert all(a.output == "" for a in week if a.error)
    session_rate = sum(bool(a.session_id) for a in week) / len(week)
    assert 0.02 < session_rate < 0.25
    bi_kwargs = [kwargs(a) for a in week if a.app == "bi"]
    assert any("sql" in k for k in bi_kwargs)
    assert any("password" in k for k in bi_kwargs)
    assert all(a.user.endswith("@example.com") and "." in a.user.split("@")[0] for a in week)


def test_durations_are_long_tailed(week):
    durations = sorted(a.end_epoch_ms - a.start_epoch_ms for a in week)
    median, p99 = durations[len(durations) // 2], durations[int(len(durations) * 0.99)]
    assert p99 > 5 * median


def test_profiles_have_roles_big_enough_for_penetration():
    profiles = generate_profiles(seed=7, users=200)
    assert len({p.user for p in profiles}) == 200
    assert all(p.email == p.user and p.user.endswith("@example.com") for p in profiles)
    roles = Counter(p.title for p in profiles)
    assert {"Data Scientist", "Software Engineer", "Product Manager", "Analyst", "Data Engineer"} <= set(roles)
    assert sum(size > 20 for size in roles.values()) >= 3
    assert all(p.team for p in profiles)
    assert {p.ab_flags["new_search_ui"] for p in profiles} == {"true", "false"}


def test_events_only_from_the_profiled_users(week):
    users = {p.user for p in generate_profiles(seed=7, users=200)}
    assert {a.user for a in week} <= users


def test_ground_truth_counts_by_app_and_day():
    def action(app, user, day, hour, error=""):
        ms = int(datetime(2024, 5, day, hour, tzinfo=timezone.utc).timestamp() * 1000)
        return UserAction(app=app, user=user, command="c", start_epoch_ms=ms, error=error)

    truth = ground_truth([
        action("amundsen", "a", 6, 9), action("amundsen", "a", 6, 23), action("amundsen", "b", 6, 10, "boom"),
        action("bi", "a", 7, 0), action("bi", "c", 12, 10),
    ], with_users=True)
    assert truth["amundsen"]["daily_users"] == {"2024-05-06": 2}
    assert truth["amundsen"]["errors"] == 1
    assert truth["bi"]["daily_users"] == {"2024-05-07": 1, "2024-05-12": 1}
    assert truth["*"]["daily_users"] == {"2024-05-06": 2, "2024-05-07": 1, "2024-05-12": 1}
    assert truth["*"]["daily_user_sets"]["2024-05-06"] == ["a", "b"]
    assert truth["*"]["weekly_users"] == {"2024-05-06": 3}
    assert (truth["*"]["events"], truth["*"]["distinct_users"]) == (5, 3)


def test_generate_jsonl_is_readable_by_publish_and_matches_the_truth(tmp_path):
    jsonl, truth_file = tmp_path / "traffic.jsonl", tmp_path / "truth.json"
    done = subprocess.run([sys.executable, "-m", "streams.cli", "generate", "--seed", "5", "--days", "3",
                           "--start-day", "2024-05-10", "--users", "60", "--events-per-day", "400",
                           "--jsonl", str(jsonl), "--truth", str(truth_file)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    parsed = list(parse_lines(jsonl.read_text().splitlines(), default_app=None))
    assert all(reason == "" for _, _, reason in parsed)
    actions = [action for _, action, _ in parsed]
    assert actions == list(generate_actions(5, date(2024, 5, 10), 3, 60, 400))
    truth = json.loads(truth_file.read_text())
    assert truth["apps"] == json.loads(json.dumps(ground_truth(actions)))
    assert truth["apps"]["*"]["daily_events"] == {"2024-05-10": 400, "2024-05-11": 80, "2024-05-12": 80}


@pytest.mark.kafka
def test_generate_publishes_profiles_and_actions(bootstrap, new_topic, tmp_path):
    from streams.contract import UserProfile

    actions_topic, profiles_topic = new_topic("gen"), new_topic("profiles", compacted=True)
    truth_file = tmp_path / "truth.json"
    done = subprocess.run([sys.executable, "-m", "streams.cli", "generate", "--seed", "9", "--days", "2",
                           "--start-day", "2024-05-06", "--users", "40", "--events-per-day", "150",
                           "--bootstrap", bootstrap, "--topic", actions_topic, "--profiles-topic", profiles_topic,
                           "--truth", str(truth_file)], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "published 300 events" in done.stdout

    records = asyncio.run(read_topic(bootstrap, actions_topic))
    received = [UserAction.FromString(r.value) for r in records]
    # keyed by the user id as sent, which the pipeline partitions by: each in its user's partition
    key = partition_key()
    assert all(r.key == key(a.user) and r.partition == partition_for_user(a.user, 4)
               for r, a in zip(records, received))
    truth = json.loads(truth_file.read_text())["apps"]
    assert ground_truth(received)["*"]["daily_users"] == truth["*"]["daily_users"]
    assert len({a.event_id for a in received}) == 300
    profiles = [UserProfile.FromString(r.value) for r in asyncio.run(read_topic(bootstrap, profiles_topic))]
    assert len({p.user for p in profiles}) == 40
