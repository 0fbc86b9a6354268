"""Enrichment: names, derived time columns, declarative property extraction, profiles, sessions."""
import datetime as dt

import pytest

from streams.contract import UserAction
from streams.stages.enrich import (SESSION_GAP_MS, assign_session, close_sessions, event_name, extract_properties,
                            join_profile, load_mapping, to_row)
from streams.stages.outcome import Source

MAPPING = load_mapping()


@pytest.mark.parametrize("command,name", [
    ("_get_table_metadata", "Get Table Metadata"),
    ("SearchSubmitted", "Search Submitted"),
    ("ViewRepogroup:python", "View Repogroup: python"),
    ("dashboard.viewed", "dashboard.viewed"),
    ("project.created", "project.created"),
    ("_log_get_user", "Log Get User"),
    ("download_results", "Download Results"),
    ("getHTTPResponse", "Get HTTP Response"),
])
def test_event_names(command, name):
    assert event_name(command) == name


@pytest.mark.parametrize("app,kwargs,props,fields,expected", [
    ("amundsen", {"table_key": "hive://gold.orders", "index": "2", "source": "search_results",
                  "search_term": "orders"}, {}, {"command": "_get_table_metadata"},
     {"resource_key": "hive://gold.orders", "result_index": 2, "source": "search_results",
      "search_term": "orders", "target_type": "table"}),
    ("amundsen", {"index": "not a number"}, {}, {"command": "_get_dashboard_metadata"},
     {"result_index": None, "target_type": "dashboard"}),
    ("amundsen", {"index": 10**12}, {}, {"command": "_get_dashboard_metadata"},  # too big for its Int32 column
     {"result_index": None, "target_type": "dashboard"}),
    ("amundsen", {"index": "-2147483648"}, {}, {"command": "_get_dashboard_metadata"},
     {"result_index": -2**31, "target_type": "dashboard"}),
    ("code-search", {}, {"query": "repo:tally lang:go", "repo": "github.com/x/tally"}, {"command": "SearchSubmitted"},
     {"search_term": "repo:tally lang:go", "resource_key": "github.com/x/tally"}),
    ("bi", {}, {"dashboard_id": "d-17"}, {"command": "dashboard.viewed", "target_type": "dashboard"},
     {"resource_key": "d-17", "target_type": "dashboard"}),
    ("other", {"nested": {"x": 1}}, {}, {"command": "app_start", "target_id": "t-9"},
     {"resource_key": "t-9"}),
])
def test_property_extraction(app, kwargs, props, fields, expected):
    action = UserAction(app=app, properties=props, **fields)
    assert extract_properties(action, kwargs, [], MAPPING) == expected


def test_bad_mapping_is_a_clear_error(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("default:\n  search_term: [nowhere.x]\n")
    with pytest.raises(ValueError, match="default.search_term: bad source 'nowhere.x'"):
        load_mapping(path)


def test_row_derives_time_columns():
    saturday_noon = int(dt.datetime(2026, 3, 7, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)
    action = UserAction(event_id="e", app="amundsen", user="u", command="_get_table_metadata",
                        start_epoch_ms=saturday_noon, end_epoch_ms=saturday_noon + 250, error="boom")
    row = to_row(action, Source("user-actions", 3, 42), {}, [], MAPPING, ingested_ms=1)
    assert (row["ds"], row["is_weekend"], row["duration_ms"], row["has_error"]) == (dt.date(2026, 3, 7), 1, 250, 1)
    assert (row["event_name"], row["kafka_partition"], row["kafka_offset"]) == ("Get Table Metadata", 3, 42)


def test_profile_join_and_missing_profile():
    row = {"user_email": "", "user_title": "", "user_team": "", "ab_flags": {}}
    join_profile(row, {"email": "u_1", "title": "Analyst", "team": "growth", "ab_flags": {"new_ui": "true"}})
    assert (row["user_title"], row["ab_flags"]) == ("Analyst", {"new_ui": "true"})
    untouched = {"user_title": ""}
    assert join_profile(untouched, None) == {"user_title": ""}


def test_sessions_split_after_30_minutes_idle_and_keep_producer_ids():
    sessions = {}
    rows = [{"user": "ann", "ts": t, "session_id": ""} for t in (0, 60_000, 60_000 + SESSION_GAP_MS + 1)]
    rows.append({"user": "ann", "ts": 60_000 + SESSION_GAP_MS + 2, "session_id": "from-sdk"})
    ids = [assign_session(r, sessions)["session_id"] for r in rows]
    assert ids[0] == ids[1] != ids[2]
    assert ids[3] == "from-sdk"
    # a replay derives the same ids
    replay = {}
    assert [assign_session({"user": "ann", "ts": r["ts"], "session_id": ""}, replay)["session_id"]
            for r in rows[:3]] == ids[:3]


def test_a_late_event_joins_the_session_it_belongs_to_not_a_later_one():
    hour = 60 * 60_000
    sessions = {}

    def session(ts):
        return assign_session({"user": "ann", "ts": ts, "session_id": ""}, sessions)["session_id"]

    morning = session(8 * hour)
    afternoon = session(14 * hour)
    assert session(8 * hour + 10 * 60_000) != afternoon      # hours late: not the afternoon's session
    assert session(14 * hour - 10 * 60_000) == afternoon     # minutes before it: still the same visit
    assert session(14 * hour + 5 * 60_000) == afternoon
    assert morning != afternoon


def test_quiet_sessions_are_forgotten_without_changing_any_id():
    rows = [("ann", 0), ("bob", 0), ("ann", 20 * 60_000), ("bob", 3 * 86_400_000), ("ann", 3 * 86_400_000)]
    kept, pruned = {}, {}
    ids_kept = [assign_session({"user": u, "ts": t, "session_id": ""}, kept)["session_id"] for u, t in rows]
    ids_pruned = []
    for user, ts in rows:
        ids_pruned.append(assign_session({"user": user, "ts": ts, "session_id": ""}, pruned)["session_id"])
        close_sessions(pruned, ts - SESSION_GAP_MS - 1)
    assert ids_pruned == ids_kept
    close_sessions(pruned, 3 * 86_400_000 + 1)  # both users quiet since their last event
    assert pruned == {}
