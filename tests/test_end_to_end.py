"""End to end through the real broker, a real worker process and embedded ClickHouse."""
import asyncio
import json
import os
import datetime as dt
import random
import socket
import time
import urllib.request

import pytest

from conftest import publish
from streams.stages.active_users import day_iso, exact_counts
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


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offset of each partition of `topic` that has one."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
            return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0}
        finally:
            await admin.close()
    return asyncio.run(read())


def committed(bootstrap: str, group: str, topic: str) -> int:
    """The number of messages of `topic` the consumer group has committed."""
    return sum(committed_offsets(bootstrap, group, topic).values())


def expected_metrics(actions: list[UserAction]) -> dict[tuple[str, str, str], int]:
    """Every metric value up to the stream's current day (its newest event's): none for days ahead."""
    days = [dt.datetime.fromtimestamp(a.start_epoch_ms / 1000, dt.timezone.utc).date().toordinal() for a in actions]
    counts = exact_counts((a.app, a.user, day) for a, day in zip(actions, days))
    current = max(days, default=0)
    return {(m, app, day_iso(day)): n for (m, app, day), n in counts.items() if day <= current}


def _not_stored(worker, actions: list[UserAction]) -> str:
    """Which sent events are not in user_actions, with their event time and any dead letter's reason."""
    stored = {row[0] for row in worker.query("SELECT DISTINCT event_id FROM user_actions")}
    missing = [a for a in actions if a.event_id not in stored]
    letters = {row[0]: row[1:] for row in worker.query(
        "SELECT event_id, reason, source_partition, source_offset, detail FROM dead_letters")}
    return f"{len(missing)} sent events not stored: " + "; ".join(
        f"{a.event_id} {a.app} {a.user} {dt.datetime.fromtimestamp(a.start_epoch_ms / 1000, dt.timezone.utc):%m-%d %H:%M} "
        f"-> {letters.get(a.event_id)}" for a in missing[:10])


def live_metrics(worker) -> dict[tuple[str, str, str], int]:
    return {(t["metric"], t["app"], t["day"]): t["value"] for t in worker.active_users()}


def wait_for_metrics(workers, expected: dict, timeout: float = 120.0, actions: list[UserAction] | None = None) -> None:
    """Wait until the live totals (from whichever worker owns them) equal `expected`; on timeout,
    fail with the keys that differ (and, given the `actions` sent, those not stored and why)."""
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
        diagnosis = []
        for worker in workers:
            stats = worker.stats() if worker.process.poll() is None else {"exited": worker.process.returncode}
            diagnosis.append(f"{worker.data_dir.name}: {_summary(stats)}\n  " + "\n  ".join(worker.problems()))
        if actions is not None and workers[-1].process.poll() is None:
            diagnosis.append(_not_stored(workers[-1], actions))
        pytest.fail(f"{len(differing)} live metrics differ (key, live, expected): {differing[:12]}\n"
                    + "\n".join(diagnosis))


def _summary(stats: dict) -> dict:
    keys = ("consumed", "delivered", "dead_lettered", "duplicates", "rerouted", "dead_letters_by_reason",
            "consumer_lag", "exited")
    return {k: stats[k] for k in keys if k in stats}


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
    # batched: the events were waiting, so every take of 100 messages went into one insert or more together
    assert stats["sink"]["max_batch_rows"] >= 100 and stats["sink"]["rows"] == len(actions)
    # where the worker's time went: every event through the stages once, CPU spent there and inserting
    final = worker.stats()
    assert final["stages"]["events"] == 3000 and final["stages"]["cpu_seconds"] > 0
    assert 0 < final["sink"]["insert_cpu_seconds"] and 0 < final["sink"]["insert_seconds"]
    # the consumer group's committed offsets reach the end once the rows are stored
    wait_for(lambda: committed(pipeline_env.bootstrap, pipeline_env.app_id, pipeline_env.topics.user_actions) == 3000,
             what="offsets committed")

    # the live tables agree exactly with a brute-force count over the same events
    wait_for_metrics([worker], expected_metrics(actions))
    worker.stop()

    # restarted on caught-up data, the worker reports no lag (not the backlog since the last commit)
    again = pipeline_env.worker().start()
    lag = wait_for(lambda: (lag := again.stats()["consumer_lag"]) and len(lag) == 4 and lag, what="lag of 4 partitions")
    assert lag == {"0": 0, "1": 0, "2": 0, "3": 0}
    with urllib.request.urlopen(again.web + "/metrics/", timeout=10) as response:
        scraped = response.read().decode()
    assert [line for line in scraped.splitlines() if line.startswith("tally_consumer_lag{")] == [
        f'tally_consumer_lag{{partition="{p}"}} 0' for p in range(4)]
    again.stop()


def test_profiles_join_onto_later_events_and_live_windows_match_clickhouse(pipeline_env, tmp_path):
    from streams.contract import UserProfile
    profiles = [UserProfile(user=f"user-{i}", email=f"person{i}@example.com", title="Analyst" if i % 2 else "Data Scientist",
                            team="growth", ab_flags={"new_search_ui": "true" if i % 3 else "false"},
                            updated_epoch_ms=1) for i in range(40)]
    asyncio.run(publish(pipeline_env.bootstrap, pipeline_env.topics.user_profiles,
                        [(p.user.encode(), p.SerializeToString()) for p in profiles]))
    worker = pipeline_env.worker().start()
    wait_for(lambda: worker.query("SELECT count() FROM user_profiles FINAL") == [[40]], what="profiles stored")
    actions = make_actions(2000, seed=6, start=dt.date(2026, 9, 7), days=20, users=40)
    send(pipeline_env.bootstrap, pipeline_env.topics.user_actions, actions)
    worker.wait_consumed(2000)

    joined = worker.query("SELECT user, any(user_title), any(ab_flags['new_search_ui']), any(user_email) "
                          "FROM user_actions GROUP BY user")
    assert len(joined) == 40
    for user, title, flag, email in joined:
        i = int(user.split("-")[1])
        assert (title, flag) == ("Analyst" if i % 2 else "Data Scientist", "true" if i % 3 else "false")
        assert "@" not in email and email.startswith("u_")  # emails are stored only as keyed pseudonyms

    # the live rolling windows equal uniqExact over the same window in ClickHouse
    wait_for_metrics([worker], expected_metrics(actions))
    live = live_metrics(worker)
    for metric, width in (("dau", 1), ("wau", 7), ("mau", 28)):
        rows = worker.query(
            f"SELECT app, toString(d), (SELECT uniqExact(user) FROM user_actions AS u WHERE u.app = a.app "
            f"AND u.ds BETWEEN d - {width - 1} AND d) FROM (SELECT DISTINCT app, ds AS d FROM user_actions) AS a")
        assert rows and all(live[(metric, app, day)] == n for app, day, n in rows)
    worker.stop()

    # with the worker gone, `tally metrics` reads the compacted metric topic
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "streams.cli", "metrics", "--bootstrap", pipeline_env.bootstrap,
                          "--topic-prefix", pipeline_env.prefix, "--data-dir", str(tmp_path / "w1"),
                          "--last", "0", "--json"], capture_output=True, text=True, check=True).stdout
    assert {(r["metric"], r["app"], r["day"]): r["value"] for r in json.loads(out)} == expected_metrics(actions)
    # with no flags: per app, DAU/WAU/MAU on the stream's current day and on the last complete day
    shown = subprocess.run([sys.executable, "-m", "streams.cli", "metrics", "--bootstrap", pipeline_env.bootstrap,
                            "--topic-prefix", pipeline_env.prefix, "--data-dir", str(tmp_path / "w1")],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    expected = expected_metrics(actions)
    current = max(day for _, _, day in expected)
    complete = (dt.date.fromisoformat(current) - dt.timedelta(days=1)).isoformat()
    assert shown[0].startswith(f"active users on {current}") and f"{complete} (the last complete day)" in shown[0]
    table = {(cells[0], cells[1]): tuple(map(int, cells[2:])) for cells in map(str.split, shown[3:-1])}
    apps = {app for _, app, _ in expected}
    assert table == {(app, day): tuple(expected.get((m, app, day), 0) for m in ("dau", "wau", "mau"))
                     for app in apps for day in (current, complete)}


def test_envelopes_of_many_actions_give_the_same_rows_and_counts(pipeline_env):
    from streams.contract import ENVELOPE_HEADER
    from streams.producer.generator import generate_actions, publish_traffic
    actions = list(generate_actions(seed=8, start_day=dt.date(2026, 8, 3), days=10, users=150, events_per_day=600))
    acked, failed = asyncio.run(publish_traffic(pipeline_env.bootstrap, pipeline_env.topics.user_actions, actions,
                                                envelope=250))
    assert (acked, failed) == (len(actions), 0)

    async def bad_envelope():
        from aiokafka import AIOKafkaProducer
        producer = AIOKafkaProducer(bootstrap_servers=pipeline_env.bootstrap)
        await producer.start()
        await producer.send_and_wait(pipeline_env.topics.user_actions, b"\xff\xff not an envelope", key=b"x",
                                     headers=[ENVELOPE_HEADER])
        await producer.stop()
    asyncio.run(bad_envelope())

    worker = pipeline_env.worker("w1", "--batch-size", "1000").start()
    stats = worker.wait_consumed(len(actions) + 1)
    assert (stats["delivered"], stats["dead_letters_by_reason"], stats["rerouted"]) == (len(actions), {"undecodable": 1}, 0)
    # inserts are cut by rows, whatever a message holds: at most one step (20 messages) past --batch-size
    assert stats["sink"]["inserts"] >= 2 and stats["sink"]["max_batch_rows"] < 1000 + 20 * 250
    assert worker.query("SELECT count(), uniqExact(event_id) FROM user_actions FINAL") == [[len(actions), len(actions)]]
    stored_users = {u for (u,) in worker.query("SELECT DISTINCT user FROM user_actions")}
    from streams.stages.scrub import Scrubber, load_policy
    scrubber = Scrubber(load_policy(hmac_key=os.environ.get("TALLY_HMAC_KEY", "")))  # the worker's key
    by_stored = [UserAction(app=a.app, user=scrubber.scrub_user(a.user), start_epoch_ms=a.start_epoch_ms)
                 for a in actions]
    assert stored_users == {a.user for a in by_stored}
    wait_for_metrics([worker], expected_metrics(by_stored))
    worker.stop()


def machine_address() -> str | None:
    """This machine's address on its first non-loopback interface (no packet is sent), if any."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def answers(url: str) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    try:
        with direct.open(url, timeout=5):
            return True
    except OSError:
        return False


def test_the_worker_port_is_local_unless_bound_wider(pipeline_env):
    """By default only this machine's loopback reaches /stats/; with --web-bind 0.0.0.0 (a container,
    whose probe and scrape come from outside) the machine's own address does too."""
    address = machine_address()
    if address is None:
        pytest.skip("no non-loopback interface to reach the worker by")
    local = pipeline_env.worker("w1").start()
    assert answers(f"{local.web}/stats/")
    assert not answers(f"http://{address}:{local.web_port}/stats/")
    local.stop()
    wide = pipeline_env.worker("w2", "--web-bind", "0.0.0.0").start()
    assert answers(f"http://{address}:{wide.web_port}/stats/")
    wide.stop()
