"""Every named KPI against generated data, checked against an answer computed in plain Python.

The rows are generated deterministically: three apps, ~120 users with profiles (some replaced by
a newer version, some missing), five weeks with weekends, searches and clicks with result
positions, edits, errors and durations. Some rows are inserted twice (same event_id), as a
redelivery would, so every KPI must stay exact under duplicates.
"""
from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict

import pytest

from streams.analyst import kpis
from streams.analyst.query import run_query

pytestmark = pytest.mark.clickhouse

START = dt.date(2024, 3, 4)  # a Monday
DAYS = 35
TITLES = [("Data Scientist", 40), ("Software Engineer", 30), ("Data Analyst", 24),
          ("Product Manager", 12), ("Designer", 6)]
PROFILED_USERS = sum(size for _, size in TITLES)
ALL_USERS = [f"u{i:03d}" for i in range(PROFILED_USERS + 8)]  # the last 8 have no profile
TERMS = ["orders", " Orders", "revenue", "users", "churn", "ORDERS", "sessions", "payments"]
TABLES = [f"hive://gold.core/table_{i}" for i in range(25)]
DASHBOARDS = [f"mode://reports/dash_{i}" for i in range(8)]
ERRORS = ["Timeout after 30s\nTraceback (most recent call last): ...", "Permission denied",
          "Table not found: gold.core.x\n  at line 3"]
EDIT_COMMANDS = ("_update_table_description", "update_table_tags")
CLICK_COMMANDS = ("_get_table_metadata", "_get_dashboard_metadata", "_log_get_user")


def readable(command: str) -> str:
    named = {"SearchSubmitted": "Search Submitted", "repo.viewed": "repo.viewed"}
    return named.get(command) or command.strip("_").replace("_", " ").title()


def action_row(**fields) -> dict:
    """A full `user_actions` row (every column), defaults for what the event doesn't set."""
    ts = fields["ts"]
    start_ms = int(ts.timestamp() * 1000)
    row = dict(event_id="", app="", command="", event_name="", user="", ts=ts, ds=ts.date(),
               is_weekend=int(ts.date().weekday() >= 5), start_epoch_ms=start_ms,
               end_epoch_ms=start_ms, duration_ms=0, host_name="web-1", session_id="",
               pos_args_json="[]", keyword_args_json="{}", output="", error="", has_error=0,
               target_id="", target_type="", label="", location="", value="", properties={},
               search_term="", result_index=None, source="", resource_key="", user_email="",
               user_title="", user_team="", ab_flags={}, scrubbed_fields=[], kafka_partition=0,
               kafka_offset=0, ingested_at=ts)
    row.update(fields)
    row["event_name"] = fields.get("event_name", readable(row["command"]))
    row["end_epoch_ms"] = row["start_epoch_ms"] + row["duration_ms"]
    return row


def make_profiles(rng: random.Random) -> tuple[list[dict], dict[str, dict]]:
    """(every profile version to insert, the latest profile per user)."""
    titles = [title for title, size in TITLES for _ in range(size)]
    rng.shuffle(titles)
    versions, latest = [], {}
    for i, title in enumerate(titles):
        user = f"u{i:03d}"
        flags = {} if i % 7 == 0 else {"new_search": rng.choice(["true", "false"]), "dark_mode": "true"}
        profile = dict(user=user, email=f"{user}@example.com", title=title, team=f"team-{i % 4}",
                       ab_flags=flags, updated_at=dt.datetime(2024, 2, 1, tzinfo=dt.timezone.utc))
        latest[user] = profile
        versions.append(profile)
        if i % 5 == 0:  # an older version with another role: the newer one must win
            versions.append({**profile, "title": "Intern", "ab_flags": {"new_search": "old"},
                             "updated_at": dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)})
    return versions, latest


def make_event(rng: random.Random, app: str, user: str, ts: dt.datetime, n: int) -> dict:
    common = dict(event_id=f"e{n:06d}", app=app, user=user, ts=ts, user_email=f"{user}@example.com",
                  duration_ms=rng.randint(5, 400) if rng.random() < 0.9 else rng.randint(1000, 9000),
                  kafka_offset=n)
    if rng.random() < 0.06:
        common.update(has_error=1, error=rng.choice(ERRORS))
    kind = rng.random()
    if app == "amundsen":
        if kind < 0.3:
            return action_row(command="search_table", search_term=rng.choice(TERMS), **common)
        if kind < 0.75:
            command = rng.choice(CLICK_COMMANDS)
            source = rng.choice(["search_results", "inline_search", "browse", "home"])
            target_type, key = {"_get_table_metadata": ("table", rng.choice(TABLES)),
                                "_get_dashboard_metadata": ("dashboard", rng.choice(DASHBOARDS)),
                                "_log_get_user": ("user", rng.choice(ALL_USERS))}[command]
            index = rng.randint(0, 9) if "search" in source and rng.random() < 0.9 else None
            term = rng.choice(TERMS) if "search" in source else ""
            return action_row(command=command, source=source, result_index=index, target_type=target_type,
                              resource_key=key, search_term=term, **common)
        if kind < 0.9:
            return action_row(command=rng.choice(EDIT_COMMANDS), target_type="table",
                              resource_key=rng.choice(TABLES), **common)
        return action_row(command="_get_popular_tables", **common)
    if app == "code-search":
        if kind < 0.5:
            return action_row(command="SearchSubmitted", search_term=rng.choice(TERMS), **common)
        return action_row(command="repo.viewed", target_type="repository", resource_key=f"repo-{rng.randint(0, 9)}",
                          **common)
    command = rng.choice(["generate_question", "execute_sql", "edit_sql", "sql_error", "download_results"])
    return action_row(command=command, **common)


def make_dead_letters() -> list[dict]:
    """Refused messages of two reasons over three days, one of them redelivered below."""
    letters = []
    for n in range(9):
        received = dt.datetime.combine(START + dt.timedelta(days=n % 3), dt.time(10, n), dt.timezone.utc)
        reason = "malformed_payload" if n % 3 else "schema_version"
        letters.append(dict(reason=reason, detail=f"{reason} #{n}", source_topic="user-actions",
                            source_partition=n % 2, source_offset=n, received_at=received, payload_size=10 + n,
                            payload_sha256=f"{n:064d}", scrubbed_payload=f"payload {n}", event_id="",
                            app=["amundsen", "chatbot"][n % 2], user="", scrubbed_fields=[], letter=n))
    return letters


def make_actions(rng: random.Random) -> list[dict]:
    rows = []
    for day in range(DAYS):
        date = START + dt.timedelta(days=day)
        weekend = date.weekday() >= 5
        for i, user in enumerate(ALL_USERS):
            chance = (0.7 if i < 30 else 0.3) * (0.2 if weekend else 1.0)
            if rng.random() >= chance:
                continue
            apps = ["amundsen", "code-search", "chatbot"]
            app = apps[i % 3] if rng.random() < 0.8 else rng.choice(apps)
            for _ in range(rng.randint(1, 6)):
                ts = dt.datetime.combine(date, dt.time(), dt.timezone.utc) + dt.timedelta(
                    seconds=rng.randint(0, 86_399), milliseconds=rng.randint(0, 999))
                rows.append(make_event(rng, app, user, ts, len(rows)))
    return rows


def insert(client, table: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    client.insert(table, [[row[c] for c in columns] for row in rows], column_names=columns)


@pytest.fixture(scope="module")
def dataset():
    rng = random.Random(20240304)
    profile_versions, profiles = make_profiles(rng)
    actions = make_actions(rng)
    redelivered = [{**row, "kafka_offset": row["kafka_offset"] + 100_000} for row in actions[::17]]
    return actions, redelivered, profile_versions, profiles


@pytest.fixture
def loaded(ch, dataset):
    actions, redelivered, profile_versions, profiles = dataset
    insert(ch, "user_actions", actions)
    insert(ch, "user_actions", redelivered)  # a second part: duplicates stay until a merge
    insert(ch, "user_profiles", profile_versions)
    insert(ch, "dead_letters", make_dead_letters())
    insert(ch, "dead_letters", make_dead_letters()[:2])  # redelivered letters collapse
    ALL_ACTIONS[:] = actions
    return ch, actions, profiles


def test_dataset_has_duplicates_and_enough_variety(loaded, dataset):
    ch, actions, profiles = loaded
    (stored,), = ch.query("SELECT count() FROM user_actions").result_rows
    assert stored == len(actions) + len(dataset[1]) > 3000
    assert len({r["user"] for r in actions}) > 100
    assert {r["is_weekend"] for r in actions} == {0, 1}


# ---- the independent answers -----------------------------------------------------------------

def in_scope(row, app, since, until) -> bool:
    return (app == "" or row["app"] == app) and since <= row["ds"] <= until


def in_people(profiles, user, role="", team="", ab="") -> bool:
    """The common people filters, by the user's latest profile (no profile: no match)."""
    if not (role or team or ab):
        return True
    profile = profiles.get(user)
    if profile is None:
        return False
    flag, _, variant = ab.partition("=")
    return ((not role or profile["title"] == role) and (not team or profile["team"] == team)
            and (not ab or profile["ab_flags"].get(flag, "") == variant))


def error_message(row) -> str:
    return row["error"].split("\n")[0][:200]


def monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def is_error(row) -> bool:
    return row["has_error"] == 1 or "error" in row["command"]


def is_search_click(row) -> bool:
    return row["command"] in CLICK_COMMANDS and row["source"] in ("search_results", "inline_search")


def is_edit(row) -> bool:
    return (row["command"].startswith(("_update", "update_"))
            or "Update" in row["event_name"] or "Edit" in row["event_name"])


def is_resource_view(row) -> bool:
    return row["target_type"] in ("table", "dashboard") and row["resource_key"] != "" and not is_edit(row)


def quantile_exact(values: list[int], level: float) -> int:
    """ClickHouse's quantileExact: the element at position floor(level * n) of the sorted values."""
    ordered = sorted(values)
    return ordered[min(int(level * len(ordered)), len(ordered) - 1)]


def variant_of(profiles, user, flag) -> str:
    if flag == "":
        return "all"
    return profiles.get(user, {}).get("ab_flags", {}).get(flag, "") or "(unset)"


def distinct_users_by(rows, key) -> list[tuple]:
    users = defaultdict(set)
    for row in rows:
        users[key(row)].add(row["user"])
    return sorted((k, len(v)) for k, v in users.items())


def role_sizes(profiles) -> Counter:
    return Counter(p["title"] for p in profiles.values())


def expected(name, actions, profiles, app="", since=START, until=START + dt.timedelta(days=DAYS - 1),
             role="", team="", ab="", **extra):
    actions = [r for r in actions if in_people(profiles, r["user"], role, team, ab)]
    scope = [r for r in actions if in_scope(r, app, since, until)]
    limit = extra.get("limit", kpis.KPIS[name].params.get("limit", kpis.Param("UInt32", 0)).default)
    if name == "dau":
        return distinct_users_by(scope, lambda r: r["ds"])
    if name == "dau_weekdays":
        return distinct_users_by([r for r in scope if r["ds"].weekday() < 5], lambda r: r["ds"])
    if name == "wau":
        return [(week, n, int(week < since or week + dt.timedelta(days=6) > until))
                for week, n in distinct_users_by(scope, lambda r: monday(r["ds"]))]
    if name in ("role_penetration", "users_per_role"):
        sizes = role_sizes(profiles)
        active = {r["user"] for r in scope if r["user"] in profiles}
        per_title = Counter(profiles[u]["title"] for u in active)
        if name == "users_per_role":
            return sorted(((t, n, sizes[t]) for t, n in per_title.items()), key=lambda x: (-x[1], x[0]))
        threshold = extra.get("threshold", 20)
        rows = [(t, n, sizes[t], n * 100 / sizes[t]) for t, n in per_title.items() if sizes[t] > threshold]
        return sorted(rows, key=lambda x: (-x[3], x[0]))
    if name == "role_usage":
        events, users = Counter(), defaultdict(set)
        for r in scope:
            if r["user"] in profiles:
                events[profiles[r["user"]]["title"]] += 1
                users[profiles[r["user"]]["title"]].add(r["user"])
        return sorted(((t, n, len(users[t])) for t, n in events.items()), key=lambda x: (-x[1], x[0]))[:limit]
    if name == "search_ctr":
        clicks, top3 = Counter(), Counter()
        for r in scope:
            if is_search_click(r):
                clicks[r["ds"]] += 1
                top3[r["ds"]] += r["result_index"] is not None and r["result_index"] <= 3
        return [(d, clicks[d], top3[d], top3[d] * 100 / clicks[d]) for d in sorted(clicks)]
    if name == "top_users":
        events, days = Counter(), defaultdict(set)
        for r in scope:
            events[r["user"]] += 1
            days[r["user"]].add(r["ds"])
        top = sorted(events, key=lambda u: (-events[u], u))[:limit]
        return [(u, profiles.get(u, {}).get("title", ""), events[u], len(days[u])) for u in top]
    if name == "top_search_terms":
        searches, users = Counter(), defaultdict(set)
        for r in scope:
            if r["search_term"] and not is_search_click(r):
                term = r["search_term"].strip(" ").lower()
                searches[term] += 1
                users[term].add(r["user"])
        return sorted(((t, n, len(users[t])) for t, n in searches.items()), key=lambda x: (-x[1], x[0]))[:limit]
    if name == "top_resources":
        views, viewers = Counter(), defaultdict(set)
        for r in scope:
            if is_resource_view(r):
                views[r["target_type"], r["resource_key"]] += 1
                viewers[r["target_type"], r["resource_key"]].add(r["user"])
        rows = sorted(((t, k, n, len(viewers[t, k])) for (t, k), n in views.items()), key=lambda x: (x[0], -x[2], x[1]))
        kept = Counter()
        return [row for row in rows if (kept.update([row[0]]) or kept[row[0]] <= limit)]
    if name == "metadata_edits":
        edits, editors = Counter(), defaultdict(set)
        for r in scope:
            if is_edit(r):
                edits[r["ds"]] += 1
                editors[r["ds"]].add(r["user"])
        return [(d, edits[d], len(editors[d])) for d in sorted(edits)]
    if name == "edit_leaders":
        edits, keys = Counter(), defaultdict(set)
        for r in scope:
            if is_edit(r):
                edits[r["user"]] += 1
                if r["resource_key"]:
                    keys[r["user"]].add(r["resource_key"])
        return sorted(((u, n, len(keys[u])) for u, n in edits.items()), key=lambda x: (-x[1], x[0]))[:limit]
    if name == "popular_actions":
        events, errors = Counter(), Counter()
        for r in scope:
            events[r["event_name"], r["command"]] += 1
            errors[r["event_name"], r["command"]] += is_error(r)
        rows = [(e, c, n, errors[e, c]) for (e, c), n in events.items()]
        return sorted(rows, key=lambda x: (-x[2], x[0], x[1]))[:limit]
    if name == "errors":
        groups = defaultdict(list)
        for r in scope:
            if is_error(r):
                groups[r["event_name"], r["command"], error_message(r)].append(r)
        rows = [(*k, len(g), len({r["user"] for r in g}), min(r["ts"] for r in g), max(r["ts"] for r in g))
                for k, g in groups.items()]
        return sorted(rows, key=lambda x: (-x[3], x[0], x[1], x[2]))[:limit]
    if name == "user_stats":
        who, days = extra["user"], extra.get("days", 30)
        rows = [r for r in actions if (r["user"] == who or r["user_email"] == who) and (app == "" or r["app"] == app)
                and until - dt.timedelta(days=days) < r["ds"] <= until]
        groups = defaultdict(list)
        for r in rows:
            groups[r["event_name"], r["command"]].append(r)
        out = [(e, c, len(g), len({r["ds"] for r in g}), sum(map(is_error, g)), max(r["ts"] for r in g))
               for (e, c), g in groups.items()]
        return sorted(out, key=lambda x: (-x[2], x[0], x[1]))
    if name in ("command_usage", "command_usage_by_user"):
        by_user = name == "command_usage_by_user"
        groups = defaultdict(list)
        for r in scope:
            groups[(r["user"] if by_user else r["app"], r["command"], r["event_name"])].append(r)
        out = []
        for key, g in groups.items():
            durations = [r["duration_ms"] for r in g]
            errors = sum(map(is_error, g))
            stats = ([] if by_user else [len({r["user"] for r in g})]) + [
                quantile_exact(durations, 0.5), quantile_exact(durations, 0.95), quantile_exact(durations, 0.99),
                errors, errors * 100 / len(g)]
            out.append((*key, len(g), *stats))
        return sorted(out, key=lambda x: (-x[3], x[0], x[1]))[:limit]
    if name == "retention":
        k, flag = extra.get("weeks", 1), extra.get("flag", "")
        user_weeks = {(r["user"], monday(r["ds"])) for r in actions
                      if (app == "" or r["app"] == app) and monday(since) <= monday(r["ds"]) <= until}
        cohorts = defaultdict(lambda: [0, 0])
        for user, week in user_weeks:
            if week + dt.timedelta(weeks=k) <= until:
                cell = cohorts[week, variant_of(profiles, user, flag)]
                cell[0] += 1
                cell[1] += (user, week + dt.timedelta(weeks=k)) in user_weeks
        return [(w, v, n, r, r * 100 / n) for (w, v), (n, r) in sorted(cohorts.items())]
    if name == "funnel":
        steps = [extra.get("step1", "search_table"), extra.get("step2", "_get_table_metadata"), extra.get("step3", "")]
        flag = extra.get("flag", "")
        times = defaultdict(lambda: ([], [], []))
        for r in scope:
            for i, step in enumerate(steps):
                if r["command"] == step or r["event_name"] == step:
                    times[r["user"]][i].append(r["ts"])
        reached = defaultdict(lambda: [0, 0, 0])
        for user, (t1, t2, t3) in times.items():
            if not t1:
                continue
            counts = reached[variant_of(profiles, user, flag)]
            counts[0] += 1
            later2 = [t for t in t2 if t >= min(t1)]
            if later2:
                counts[1] += 1
                counts[2] += any(t >= min(later2) for t in t3)
        return [(v, i + 1, steps[i], counts[i], counts[i] * 100 / counts[0])
                for v, counts in sorted(reached.items()) for i in range(3) if steps[i]]
    if name in USAGE_EXPECTATIONS:
        return USAGE_EXPECTATIONS[name](actions, scope, profiles, app=app, since=since, until=until,
                                        **{**extra, "limit": limit})
    raise AssertionError(f"no expectation for {name}")


# ---- the usage-analysis KPIs (the dashboard's) -------------------------------------------------

def _in_app(r, app) -> bool:
    return app == "" or r["app"] == app


def _days(since, until):
    day = since
    while day <= until:
        yield day
        day += dt.timedelta(days=1)


def exp_active_users(actions, scope, profiles, app, since, until, **_):
    active = defaultdict(set)
    for r in actions:
        if _in_app(r, app):
            active[r["ds"]].add(r["user"])
    first = min(active) if active else since
    rows = []
    for day in _days(max(since, first), until):
        def window(width):
            return set().union(*(active.get(day - dt.timedelta(days=k), set()) for k in range(width)))
        dau, wau, mau = len(window(1)), len(window(7)), len(window(28))
        if mau:
            rows.append((day, dau, wau, mau, dau * 100 / mau))
    return rows


def exp_new_returning(actions, scope, profiles, app, **_):
    first = {}
    for r in sorted((r for r in ALL_ACTIONS if _in_app(r, app)), key=lambda r: r["ds"]):
        first.setdefault(r["user"], r["ds"])
    days = defaultdict(set)
    for r in scope:
        days[r["ds"]].add(r["user"])
    return [(d, sum(first[u] == d for u in users), sum(first[u] < d for u in users)) for d, users in sorted(days.items())]


def exp_events_per_day(actions, scope, profiles, **_):
    groups = defaultdict(list)
    for r in scope:
        groups[r["ds"]].append(r)
    return [(d, len(g), len({r["user"] for r in g}), sum(map(is_error, g))) for d, g in sorted(groups.items())]


def exp_trend(actions, scope, profiles, since, until, event="", measure="events", interval="day", breakdown="",
              **_):
    def split(r):
        profile = profiles.get(r["user"], {})
        if breakdown == "app":
            return r["app"]
        if breakdown in ("role", "team"):
            return profile.get("title" if breakdown == "role" else "team", "")
        if breakdown == "event_name":
            return r["event_name"]
        if breakdown.startswith("flag:"):
            return profile.get("ab_flags", {}).get(breakdown[5:], "")
        return "all"
    groups = defaultdict(list)
    for r in scope:
        if event in ("", r["command"], r["event_name"]):
            period = monday(r["ds"]) if interval == "week" else r["ds"]
            groups[period, split(r)].append(r)
    span = dt.timedelta(days=6 if interval == "week" else 0)
    return [(p, p + span, b, len({r["user"] for r in g}) if measure == "users" else len(g),
             int(p < since or p + span > until))
            for (p, b), g in sorted(groups.items())]


def exp_apps(actions, scope, profiles, **_):
    groups = defaultdict(list)
    for r in scope:
        groups[r["app"]].append(r)
    rows = []
    for app, g in groups.items():
        errors = sum(map(is_error, g))
        rows.append((app, len({r["user"] for r in g}), len(g), len({r["command"] for r in g}), errors,
                     errors * 100 / len(g), min(r["ds"] for r in g), max(r["ds"] for r in g)))
    return sorted(rows, key=lambda x: (-x[2], x[0]))


def exp_recent_events(actions, scope, profiles, limit, command="", user="", resource="", errors_only=0, error="",
                      **_):
    rows = [r for r in scope if command in ("", r["command"], r["event_name"]) and user in ("", r["user"])
            and resource in ("", r["resource_key"]) and (not errors_only or is_error(r))
            and error in ("", error_message(r))]
    rows.sort(key=lambda r: (-r["ts"].timestamp(), r["event_id"]))
    return [(r["ts"], r["app"], r["user"], r["command"], r["event_name"], r["duration_ms"], r["target_type"],
             r["resource_key"], error_message(r), r["pos_args_json"], r["keyword_args_json"], r["output"],
             r["scrubbed_fields"]) for r in rows[:limit]]


def exp_resource_activity(actions, scope, profiles, limit, resource, **_):
    rows = sorted((r for r in scope if r["resource_key"] == resource), key=lambda r: (-r["ts"].timestamp(), r["event_id"]))
    return [(r["ts"], r["user"], r["app"], r["command"], r["event_name"], r["target_type"], r["duration_ms"],
             error_message(r)) for r in rows[:limit]]


def exp_resource_users(actions, scope, profiles, limit, resource, **_):
    groups = defaultdict(list)
    for r in scope:
        if r["resource_key"] == resource:
            groups[r["user"]].append(r)
    rows = [(u, len(g), len({r["command"] for r in g}), min(r["ts"] for r in g), max(r["ts"] for r in g))
            for u, g in groups.items()]
    return sorted(rows, key=lambda x: (-x[1], x[0]))[:limit]


def exp_resources(actions, scope, profiles, limit, **_):
    groups = defaultdict(list)
    for r in scope:
        if r["resource_key"]:
            groups[r["resource_key"]].append(r)
    rows = [(k, g[0]["target_type"], len(g), len({r["user"] for r in g}), max(r["ts"] for r in g))
            for k, g in groups.items()]
    return sorted(rows, key=lambda x: (-x[2], x[0]))[:limit]


def exp_retention_cohorts(actions, scope, profiles, app, since, until, **_):
    weeks = {(r["user"], monday(r["ds"])) for r in actions if _in_app(r, app) and r["ds"] <= until}
    cohort = {}
    for user, week in sorted(weeks, key=lambda x: x[1]):
        cohort.setdefault(user, week)
    sizes = Counter(cohort.values())
    cells = Counter((cohort[u], (w - cohort[u]).days // 7) for u, w in weeks if cohort[u] >= monday(since))
    return [(c, k, n, sizes[c], n * 100 / sizes[c]) for (c, k), n in sorted(cells.items())]


def exp_filter_values(actions, scope, profiles, **_):
    rows = [("app", a, n) for a, n in Counter(r["app"] for r in ALL_ACTIONS).items()]
    rows += [("role", t, n) for t, n in Counter(p["title"] for p in profiles.values()).items()]
    rows += [("team", t, n) for t, n in Counter(p["team"] for p in profiles.values()).items()]
    rows += [("ab", f, n) for f, n in Counter(f"{k}={v}" for p in profiles.values()
                                               for k, v in p["ab_flags"].items()).items()]
    return sorted(rows, key=lambda x: (x[0], x[1]))


def exp_stored_per_day(actions, scope, profiles, app, since, until, **_):
    groups = defaultdict(list)
    for r in ALL_ACTIONS:
        if _in_app(r, app) and since <= r["ingested_at"].date() <= until:
            groups[r["ingested_at"].date()].append(r)
    return [(d, len(g), min(r["ds"] for r in g), max(r["ds"] for r in g)) for d, g in sorted(groups.items())]


def _letters(app, since, until):
    return [d for d in make_dead_letters() if _in_app(d, app) and since <= d["received_at"].date() <= until]


def exp_dead_letters(actions, scope, profiles, app, since, until, **_):
    groups = defaultdict(list)
    for d in _letters(app, since, until):
        groups[d["reason"]].append(d)
    rows = [(reason, len(g), min(d["received_at"] for d in g), max(d["received_at"] for d in g),
             max(g, key=lambda d: d["received_at"])["detail"]) for reason, g in groups.items()]
    return sorted(rows, key=lambda x: (-x[1], x[0]))


def exp_recent_dead_letters(actions, scope, profiles, app, since, until, limit, reason="", **_):
    rows = [d for d in _letters(app, since, until) if reason in ("", d["reason"])]
    rows.sort(key=lambda d: (-d["received_at"].timestamp(), d["source_partition"], d["source_offset"]))
    return [(d["received_at"], d["reason"], d["detail"], d["source_partition"], d["source_offset"], d["payload_size"],
             d["app"], d["user"], d["scrubbed_payload"]) for d in rows[:limit]]


USAGE_EXPECTATIONS = {name[4:]: fn for name, fn in list(globals().items()) if name.startswith("exp_")}
ALL_ACTIONS: list[dict] = []  # every generated event, whatever the filters (set by the `loaded` fixture)


# ---- the checks ------------------------------------------------------------------------------

def run_kpi(client, name, **given):
    kpi = kpis.get_kpi(name)
    columns, rows = run_query(client, kpi.sql, kpis.bind_params(kpi, given, today=START + dt.timedelta(days=DAYS - 1)))
    assert kpi.chart.x in columns and kpi.chart.y in columns
    return columns, [tuple(_naive(v) for v in row) for row in rows]


def _naive(value):
    """DateTime64 comes back timezone-aware or naive UTC depending on the driver; compare as UTC."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _expected_naive(rows):
    return [tuple(_naive(v) for v in row) for row in rows]


RANGE = dict(since=dt.date(2024, 3, 6), until=dt.date(2024, 3, 31))  # starts mid-week, ends on a Sunday

CASES = [
    ("dau", {}), ("dau", {"app": "amundsen", **RANGE}),
    ("dau_weekdays", {}), ("dau_weekdays", {"app": "chatbot", **RANGE}),
    ("wau", {}), ("wau", {"app": "code-search", "since": dt.date(2024, 3, 13), "until": dt.date(2024, 3, 27)}),
    ("role_penetration", {}), ("role_penetration", {"threshold": 10, "app": "amundsen", **RANGE}),
    ("role_usage", {}), ("role_usage", {"limit": 3, **RANGE}),
    ("users_per_role", {}), ("users_per_role", {"app": "chatbot"}),
    ("search_ctr", {}), ("search_ctr", {"app": "amundsen", **RANGE}),
    ("top_users", {}), ("top_users", {"limit": 7, "app": "amundsen", **RANGE}),
    ("top_search_terms", {}), ("top_search_terms", {"limit": 3, "app": "code-search"}),
    ("top_resources", {}), ("top_resources", {"limit": 4, **RANGE}),
    ("metadata_edits", {}), ("metadata_edits", {"app": "amundsen", **RANGE}),
    ("edit_leaders", {}), ("edit_leaders", {"limit": 5, "app": "chatbot"}),
    ("popular_actions", {}), ("popular_actions", {"limit": 4, "app": "amundsen", **RANGE}),
    ("errors", {}), ("errors", {"limit": 100, "app": "chatbot"}),
    ("user_stats", {"user": "u003", "until": dt.date(2024, 4, 7)}), ("user_stats", {"user": "u007@example.com", "days": 10,
                                                      "until": dt.date(2024, 3, 20)}),
    ("command_usage", {}), ("command_usage", {"app": "amundsen", "limit": 3, **RANGE}),
    ("command_usage_by_user", {}), ("command_usage_by_user", {"limit": 500, **RANGE}),
    ("retention", {}), ("retention", {"weeks": 2, "flag": "new_search"}),
    ("retention", {"flag": "new_search", "app": "amundsen", **RANGE}),
    ("funnel", {}), ("funnel", {"flag": "new_search", "step1": "Search Table", "step2": "_get_table_metadata",
                                "step3": "_update_table_description"}),
    ("funnel", {"app": "chatbot", "step1": "generate_question", "step2": "execute_sql", "step3": "edit_sql",
                **RANGE}),
    # the common people filters on the seeds' reports
    ("dau", {"role": "Data Scientist"}), ("top_users", {"team": "team-1", "ab": "new_search=true", **RANGE}),
    ("retention", {"role": "Software Engineer", "flag": "dark_mode"}), ("funnel", {"ab": "new_search=false"}),
    ("command_usage", {"team": "team-2", "app": "chatbot"}),
    # the usage-analysis KPIs
    ("active_users", {}), ("active_users", {"app": "amundsen", "role": "Data Analyst", **RANGE}),
    ("new_returning", {}), ("new_returning", {"app": "chatbot", "team": "team-3", **RANGE}),
    ("events_per_day", {}), ("events_per_day", {"ab": "dark_mode=true", **RANGE}),
    ("trend", {}), ("trend", {"event": "Search Table", "measure": "users", "interval": "week", "breakdown": "role",
                              **RANGE}),
    ("trend", {"measure": "users", "breakdown": "flag:new_search", "app": "amundsen"}),
    ("trend", {"interval": "week", "breakdown": "app", "team": "team-0"}),
    ("trend", {"event": "execute_sql", "breakdown": "event_name"}),
    ("apps", {}), ("apps", {"role": "Designer", **RANGE}),
    ("recent_events", {}), ("recent_events", {"command": "_get_table_metadata", "limit": 500, **RANGE}),
    ("recent_events", {"errors_only": 1, "error": "Permission denied", "limit": 1000}),
    ("recent_events", {"user": "u004", "resource": TABLES[3], "limit": 1000}),
    ("resource_activity", {"resource": TABLES[2]}), ("resource_activity", {"resource": DASHBOARDS[1], **RANGE}),
    ("resource_users", {"resource": TABLES[2]}), ("resource_users", {"resource": "repo-3", "limit": 3}),
    ("resources", {}), ("resources", {"app": "code-search", "limit": 5, **RANGE}),
    ("retention_cohorts", {}), ("retention_cohorts", {"app": "chatbot", "ab": "new_search=true", **RANGE}),
    ("filter_values", {}),
    ("stored_per_day", {}), ("stored_per_day", {"app": "chatbot", **RANGE}),
    ("dead_letters", {}), ("dead_letters", {"app": "chatbot", "since": START + dt.timedelta(days=1)}),
    ("recent_dead_letters", {}), ("recent_dead_letters", {"reason": "schema_version", "app": "amundsen"}),
]


@pytest.mark.parametrize("name,given", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_kpi_matches_independent_answer(loaded, name, given):
    ch, actions, profiles = loaded
    columns, rows = run_kpi(ch, name, **given)
    want = _expected_naive(expected(name, actions, profiles, **given))
    assert rows, f"{name} returned nothing; the generated data should exercise it"
    assert rows == want


def test_every_kpi_is_checked():
    assert {name for name, _ in CASES} == set(kpis.KPIS)


def test_duplicates_would_change_naive_counts(loaded, dataset):
    """The redelivered rows are really there: a count without FINAL sees them, the KPIs don't."""
    ch, actions, _ = loaded
    (raw,), = ch.query("SELECT count() FROM user_actions WHERE command = 'search_table'").result_rows
    (exact,), = ch.query("SELECT count() FROM kpi_actions WHERE command = 'search_table'").result_rows
    assert exact == sum(r["command"] == "search_table" for r in actions) < raw


def test_role_threshold_filters_small_roles(loaded):
    ch, *_ = loaded
    _, rows = run_kpi(ch, "role_penetration")
    assert {title for title, *_ in rows} == {t for t, size in TITLES if size > 20}


def test_views_are_readable_directly(loaded):
    """Analysts can query the kpi_* views without parameters; app = '' holds all apps together."""
    ch, actions, _ = loaded
    rows = ch.query("SELECT app, sum(active_users) FROM kpi_wau GROUP BY app ORDER BY app").result_rows
    apps = dict(rows)
    assert set(apps) == {"", "amundsen", "code-search", "chatbot"}
    weekly = {(r["user"], monday(r["ds"])) for r in actions}
    assert apps[""] == len(weekly)


# ---- parameters ------------------------------------------------------------------------------

def test_bind_params_fills_defaults_and_types():
    kpi = kpis.get_kpi("role_penetration")
    bound = kpis.bind_params(kpi, {"since": "2024-03-01", "threshold": "5"}, today=dt.date(2024, 6, 1))
    assert bound == {"app": "", "since": dt.date(2024, 3, 1), "until": dt.date(2024, 6, 1), "threshold": 5,
                     "role": "", "team": "", "ab": ""}


def test_today_is_a_date_only_where_a_date_is_asked_for():
    """`--until today` is today's date; a user or an app that is called "today" stays that string."""
    bound = kpis.bind_params(kpis.get_kpi("user_stats"), {"user": "today", "app": "today", "until": "today"},
                             today=dt.date(2024, 6, 1))
    assert (bound["user"], bound["app"], bound["until"]) == ("today", "today", dt.date(2024, 6, 1))


@pytest.mark.parametrize("name,given,message", [
    ("nope", {}, "unknown report 'nope'"),
    ("dau", {"threshold": "3"}, "dau does not take --threshold"),
    ("dau", {"since": "March"}, "--since must be a date YYYY-MM-DD"),
    ("top_users", {"limit": "-1"}, "--limit must be a whole number"),
    ("user_stats", {}, "user_stats needs --user"),
    ("user_stats", {"user": "ann", "role": "Designer"}, "user_stats does not take --role"),
    ("trend", {"measure": "sum"}, "--measure must be one of 'events', 'users', not 'sum'"),
    ("dau", {"ab": "new_search"}, "--ab takes FLAG=VARIANT"),
])
def test_bind_params_rejects_with_a_clear_message(name, given, message):
    with pytest.raises(kpis.KpiError, match=message.replace("(", r"\(")):
        kpis.bind_params(kpis.get_kpi(name), given)


def test_every_kpi_sql_uses_its_declared_params_only():
    import re
    for kpi in kpis.KPIS.values():
        used = set(re.findall(r"\{(\w+):\w+\}", kpi.sql))
        declared = set(kpis.all_params(kpi))
        assert used == declared, kpi.name
