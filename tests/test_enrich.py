"""Enrichment: names, derived time columns, declarative property extraction, profiles, sessions."""
import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st

from streams.contract import UserAction
from streams.stages.enrich import (KPI_COLUMNS, SESSION_GAP_MS, assign_sessions, build_columns, close_sessions,
                                   event_name, join_profiles, load_mapping, rows_of)
from streams.stages.outcome import Source
from streams.stages.validate import read_fields

MAPPING = load_mapping()


def one_row(action: UserAction, kwargs: dict | None = None, source: Source = Source("user-actions", 0, 0)) -> dict:
    """The row the pipeline's column path (`build_columns`) makes of one action."""
    actions = [action]
    return rows_of(build_columns(read_fields(actions), actions, [source], [kwargs or {}], [[]], MAPPING, 1))[0]


def session(open_sessions: dict, ts: int, user: str = "ann", session_id: str = "") -> str:
    """The session the pipeline's `assign_sessions` gives one event."""
    return assign_sessions({"user": [user], "ts": [ts], "session_id": [session_id]}, open_sessions)["session_id"][0]


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
    row = one_row(UserAction(app=app, properties=props, **fields), kwargs)
    assert {name: row[name] for name in KPI_COLUMNS} == {**dict.fromkeys(KPI_COLUMNS, ""), "result_index": None,
                                                         **expected}


_KEYS = ("table_key", "index", "result_index", "source", "search_term", "term", "query", "repo", "key", "user_id",
         "dashboard_id", "target_type", "nested", "other")
_VALUES = st.one_of(st.sampled_from(["", "x", "hive://gold.t", "7", "not a number"]), st.none(),
                    st.integers(-2**40, 2**40), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3), max_size=2))
_ROWS = st.lists(st.tuples(st.sampled_from(["amundsen", "code-search", "bi", "other"]),
                           st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=5),
                           st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(["", "p", "3", "d-1"]), max_size=3),
                           st.sampled_from(["", "t-9"]), st.sampled_from(["", "search_results"]),
                           st.sampled_from(["", "chart"])),
                 min_size=1, max_size=30)


def kpis_by_the_rule(action: UserAction, kwargs: dict) -> dict:
    """The mapping's rule, row by row: each column takes the first of its sources, in order, that has a
    value (not missing, null or ""); result_index as an Int32 or None, the others as text."""
    found = {}
    for column, sources in MAPPING.for_app(action.app).items():
        for kind, path in sources:
            if kind == "kwargs":
                value = kwargs.get(path[0])
                for part in path[1:]:
                    value = value.get(part) if isinstance(value, dict) else None
            elif kind == "props":
                value = action.properties.get(path[0])
            elif kind == "field":
                value = getattr(action, path[0])
            else:
                value = None  # no positional arguments here
            if value is not None and value != "":
                found[column] = value
                break
    kpis = {**dict.fromkeys(KPI_COLUMNS, ""), "result_index": None}
    for column, value in found.items():
        if column != "result_index":
            kpis[column] = value if isinstance(value, str) else str(value)
            continue
        try:
            index = int(value)
        except (TypeError, ValueError, OverflowError):
            index = None
        kpis[column] = index if index is not None and -2**31 <= index < 2**31 else None
    kpis["target_type"] = kpis["target_type"] or MAPPING.target_type_for(action.command)
    return kpis


@settings(max_examples=150, deadline=None)
@given(_ROWS)
def test_every_row_of_a_batch_gets_the_kpis_of_the_mapping_rule(rows):
    """A batch's rows share the work of their argument shapes; each row still gets exactly what the
    mapping's rule gives it, alone or in any batch."""
    actions = [UserAction(app=app, command="_get_table_metadata", properties=props, target_id=target_id,
                          location=location, target_type=target_type)
               for app, _, props, target_id, location, target_type in rows]
    kwargs = [row[1] for row in rows]
    batch = rows_of(build_columns(read_fields(actions), actions, [Source("t", 0, 0)] * len(rows), kwargs,
                                  [[] for _ in rows], MAPPING, 1))
    for row, action, arguments in zip(batch, actions, kwargs):
        expected = kpis_by_the_rule(action, arguments)
        assert {name: row[name] for name in KPI_COLUMNS} == expected
        alone = one_row(action, arguments)
        assert {name: alone[name] for name in KPI_COLUMNS} == expected


def test_bad_mapping_is_a_clear_error(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("default:\n  search_term: [nowhere.x]\n")
    with pytest.raises(ValueError, match="default.search_term: bad source 'nowhere.x'"):
        load_mapping(path)


def test_row_derives_time_columns():
    saturday_noon = int(dt.datetime(2026, 3, 7, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)
    action = UserAction(event_id="e", app="amundsen", user="u", command="_get_table_metadata",
                        start_epoch_ms=saturday_noon, end_epoch_ms=saturday_noon + 250, error="boom")
    row = one_row(action, source=Source("user-actions", 3, 42))
    assert (row["ds"], row["is_weekend"], row["duration_ms"], row["has_error"]) == (dt.date(2026, 3, 7), 1, 250, 1)
    assert (row["event_name"], row["kafka_partition"], row["kafka_offset"]) == ("Get Table Metadata", 3, 42)


def test_profile_join_and_missing_profile():
    columns = {"user": ["ann", "bob"], "user_email": ["", ""], "user_title": ["", ""], "user_team": ["", ""],
               "ab_flags": [{}, {}]}
    join_profiles(columns, {"ann": {"email": "u_1", "title": "Analyst", "team": "growth", "ab_flags": {"new_ui": "true"}}})
    assert columns == {"user": ["ann", "bob"], "user_email": ["u_1", ""], "user_title": ["Analyst", ""],
                       "user_team": ["growth", ""], "ab_flags": [{"new_ui": "true"}, {}]}


def test_sessions_split_after_30_minutes_idle_and_keep_producer_ids():
    sessions = {}
    times = [0, 60_000, 60_000 + SESSION_GAP_MS + 1]
    columns = {"user": ["ann"] * 4, "ts": times + [times[-1] + 1], "session_id": ["", "", "", "from-sdk"]}
    ids = assign_sessions(columns, sessions)["session_id"]
    assert ids[0] == ids[1] != ids[2]
    assert ids[3] == "from-sdk"
    # a replay, event by event, derives the same ids
    replay = {}
    assert [session(replay, ts) for ts in times] == ids[:3]


def test_a_late_event_joins_the_session_it_belongs_to_not_a_later_one():
    hour = 60 * 60_000
    sessions = {}
    morning = session(sessions, 8 * hour)
    afternoon = session(sessions, 14 * hour)
    assert session(sessions, 8 * hour + 10 * 60_000) != afternoon      # hours late: not the afternoon's session
    assert session(sessions, 14 * hour - 10 * 60_000) == afternoon     # minutes before it: still the same visit
    assert session(sessions, 14 * hour + 5 * 60_000) == afternoon
    assert morning != afternoon


def test_quiet_sessions_are_forgotten_without_changing_any_id():
    rows = [("ann", 0), ("bob", 0), ("ann", 20 * 60_000), ("bob", 3 * 86_400_000), ("ann", 3 * 86_400_000)]
    kept, pruned = {}, {}
    ids_kept = [session(kept, t, u) for u, t in rows]
    ids_pruned = []
    for user, ts in rows:
        ids_pruned.append(session(pruned, ts, user))
        close_sessions(pruned, ts - SESSION_GAP_MS - 1)
    assert ids_pruned == ids_kept
    close_sessions(pruned, 3 * 86_400_000 + 1)  # both users quiet since their last event
    assert pruned == {}
