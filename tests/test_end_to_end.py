"""End to end through the real broker, a real worker process and embedded ClickHouse."""
import asyncio
import datetime as dt
import random
import time

import pytest

from conftest import publish
from streams.active_users import day_iso, exact_counts
from streams.contract import UserAction, new_event_id

pytestmark = pytest.mark.kafka

DAY_MS = 86_400_000
APPS = {"amundsen": ["_get_table_metadata", "search_table", "_log_get_user", "_update_table_description"],
        "code-search": ["SearchSubmitted", "ViewRepogroup:python"],
        "bi": ["dashboard.viewed", "query.executed"]}


def make_actions(n: int, seed: int, start: dt.date, days: int, users: int = 120) -> list[UserAction]:
    """Deterministic traffic in event-time order, like a backfill of `days` days from `start`."""
    rnd = random.Random(seed)
    start_ms = int(dt.datetime(start.year, start.month, start.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
    times = sorted(start_ms + rnd.randrange(days * DAY_MS) for _ in range(n))
    actions = []
    for ts in times:
        app = rnd.choice(list(APPS))
        actions.append(UserAction(
            event_id=new_event_id(ts), app=app, command=rnd.choice(APPS[app]), user=f"user-{rnd.randrange(users)}",
            schema_version=1, start_epoch_ms=ts, end_epoch_ms=ts + rnd.randrange(5, 900), host_name="web-1",
            keyword_args_json='{"index": "%d", "source": "search_results"}' % rnd.randrange(10),
            error="Timeout" if rnd.random() < 0.03 else ""))
    return actions


def send(bootstrap: str, topic: str, actions: list[UserAction]) -> None:
    asyncio.run(publish(bootstrap, topic, [(a.user.encode(), a.SerializeToString()) for a in actions]))


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(what)


def expected_metrics(actions: list[UserAction]) -> dict[tuple[str, str, str], int]:
    counts = exact_counts((a.app, a.user, dt.datetime.fromtimestamp(a.start_epoch_ms / 1000, dt.timezone.utc).date().toordinal())
                          for a in actions)
    return {(m, app, day_iso(day)): n for (m, app, day), n in counts.items()}


def live_metrics(worker) -> dict[tuple[str, str, str], int]:
    return {(t["metric"], t["app"], t["day"]): t["value"] for t in worker.active_users()}


def wait_for_metrics(workers, expected: dict, timeout: float = 120.0) -> None:
    """Wait until the live totals (from whichever worker owns them) equal `expected`; on timeout,
    fail with the keys that differ."""
    live: dict = {}

    def equal() -> bool:
        live.clear()
        for worker in workers:
            live.update(live_metrics(worker))
        return live == expected

    try:
        wait_for(equal, timeout=timeout, what="live metrics")
    except TimeoutError:
        differing = sorted((k, live.get(k), expected.get(k)) for k in set(live) | set(expected)
                           if live.get(k) != expected.get(k))
        pytest.fail(f"{len(differing)} live metrics differ (key, live, expected): {differing[:12]}")


def test_events_land_in_clickhouse_with_exact_rows_and_distinct_users(pipeline_env):
    actions = make_actions(3000, seed=1, start=dt.date(2026, 10, 1), days=21)
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, actions)
    worker = pipeline_env.worker().start()
    stats = worker.wait_consumed(len(actions))
    assert (stats["delivered"], stats["dead_lettered"], stats["duplicates"]) == (3000, 0, 0)

    rows = worker.query("SELECT event_id, app, command, user, toString(ds), duration_ms FROM user_actions FINAL")
    expected = {(a.event_id, a.app, a.command, a.user,
                 dt.datetime.fromtimestamp(a.start_epoch_ms / 1000, dt.timezone.utc).date().isoformat(),
                 a.end_epoch_ms - a.start_epoch_ms) for a in actions}
    assert {tuple(r) for r in rows} == expected

    per_day = worker.query("SELECT app, toString(ds), uniqExact(user) FROM user_actions GROUP BY app, ds")
    truth: dict[tuple[str, str], set] = {}
    for a in actions:
        day = dt.datetime.fromtimestamp(a.start_epoch_ms / 1000, dt.timezone.utc).date().isoformat()
        truth.setdefault((a.app, day), set()).add(a.user)
    assert {(app, day): n for app, day, n in per_day} == {k: len(v) for k, v in truth.items()}
    # ~2 inserts per second of consumption at most: batched, never one insert per event
    assert stats["sink"]["inserts"] < len(actions) / 100

    # the live tables agree exactly with a brute-force count over the same events
    wait_for_metrics([worker], expected_metrics(actions))
    worker.stop()
