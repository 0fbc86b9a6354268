"""History and late events, sent as a client in another codebase would: the .proto compiled anew
(not the project's SDK or generated module), plain aiokafka, keyed by the raw email, one message per
event. Every valid event is stored and counted exactly, whatever the path or the delay: a backfill
into a fresh worker, a backfill behind a day of live traffic, out of order, and with duplicates."""
from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from test_end_to_end import _not_stored, expected_metrics, wait_for, wait_for_metrics
from streams.contract import UserAction

ROOT = Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000
APPS = ("amundsen", "code-search", "bi")

# A client of its own: generated code from the .proto file and aiokafka, nothing of the project's.
CLIENT = r'''
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from tally.v1 import user_action_pb2
from aiokafka import AIOKafkaProducer

async def main(bootstrap, topic, events_file):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for line in open(events_file):
            fields = json.loads(line)
            raw = fields.pop("_raw", None)
            value = bytes.fromhex(raw) if raw else user_action_pb2.UserAction(**fields).SerializeToString()
            futures.append(await producer.send(topic, value, key=fields["user"].encode()))  # key = user, as the README says
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    print("sent", len(futures))

asyncio.run(main(*sys.argv[2:5]))
'''


@pytest.fixture(scope="module")
def compiled_proto(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proto")
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
                           str(ROOT / "proto/tally/v1/user_action.proto")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for package in (out / "tally", out / "tally/v1"):
        (package / "__init__.py").touch()
    return out


def send_as_plain_client(compiled: Path, bootstrap: str, topic: str, events: list[dict], tmp_path: Path) -> None:
    events_file = tmp_path / f"events-{random.random():.6f}.jsonl"
    events_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    done = subprocess.run([sys.executable, str(script), str(compiled), bootstrap, topic, str(events_file)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # not the project's directory
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sent", str(len(events))]


def history(days: int, end_day: dt.date, seed: int, users: int = 60, per_day: int = 60) -> list[dict]:
    """`days` of events from three apps, oldest first, ending on `end_day`: each user active on some days."""
    rng = random.Random(seed)
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    people = [f"person{i}@example.com" for i in range(users)]
    events = []
    for back in range(days - 1, -1, -1):
        day = end_day - dt.timedelta(days=back)
        midnight = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
        for n in range(rng.randint(per_day // 2, per_day)):
            start = midnight + rng.randrange(DAY_MS - 60_000)
            if start > now_ms - 60_000:  # today's events so far, nothing from later today
                continue
            events.append(dict(event_id=f"h{seed}-{back}-{n}", app=rng.choice(APPS), user=rng.choice(people),
                               command=rng.choice(["search", "open_table", "run_query"]), schema_version=1,
                               start_epoch_ms=start, end_epoch_ms=start + rng.randint(5, 900),
                               keyword_args_json=json.dumps({"term": f"t{n % 7}"})))
    events.sort(key=lambda e: e["start_epoch_ms"])
    return events


def bad_events(end_day: dt.date) -> tuple[list[dict], dict[str, int]]:
    """Invalid input among the history, each with the reason it must be dead-lettered for."""
    start = int(dt.datetime(end_day.year, end_day.month, end_day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
    base = dict(app="bi", user="bad@example.com", command="search", schema_version=1, start_epoch_ms=start)
    bad = [dict(base, event_id="bad-1", schema_version=9), dict(base, event_id="bad-2", keyword_args_json="{oops"),
           dict(base, event_id="bad-3", start_epoch_ms=1_700_000), dict(base, event_id="bad-4", user=""),
           dict(base, event_id="bad-5", _raw=b"\xff\x00not protobuf".hex())]
    return bad, {"unsupported_schema_version": 1, "invalid_json": 1, "implausible_timestamp": 1,
                 "missing_field": 1, "undecodable": 1}


def as_actions(events: list[dict]) -> list[UserAction]:
    return [UserAction(app=e["app"], user=e["user"], start_epoch_ms=e["start_epoch_ms"], event_id=e["event_id"])
            for e in events]


def check_exact(worker, valid: list[dict], stored_user) -> None:
    """Rows, and DAU/WAU/MAU per app and day both in ClickHouse and live, against the sent events."""
    unique = {e["event_id"]: e for e in valid}
    try:
        wait_for(lambda: worker.query("SELECT uniqExact(event_id) FROM user_actions")[0][0] >= len(unique),
                 timeout=180, what=f"{len(unique)} rows")
    except TimeoutError:
        stats = worker.stats()
        pytest.fail(f"{_not_stored(worker, as_actions(list(unique.values())))}\nstats: "
                    f"{ {k: stats.get(k) for k in ('consumed', 'delivered', 'dead_letters_by_reason', 'consumer_lag')} }"
                    f"\n" + "\n".join(worker.problems()))
    assert worker.query("SELECT count(), uniqExact(event_id) FROM user_actions FINAL") == [[len(unique), len(unique)]], \
        _not_stored(worker, as_actions(list(unique.values())))
    stored = [UserAction(app=e["app"], user=stored_user(e["user"]), start_epoch_ms=e["start_epoch_ms"])
              for e in unique.values()]
    expected = expected_metrics(stored)
    daily = {(app, str(day)): n for app, day, n in worker.query(
        "SELECT app, ds, uniqExact(user) FROM user_actions GROUP BY app, ds")}
    assert daily == {(app, day): n for (metric, app, day), n in expected.items() if metric == "dau" and app != "*"}
    wait_for_metrics([worker], expected, timeout=180, actions=as_actions(list(unique.values())))


@pytest.fixture
def stored_user():
    import os
    from streams.stages.scrub import Scrubber, load_policy
    return Scrubber(load_policy(hmac_key=os.environ.get("TALLY_HMAC_KEY", ""))).scrub_user


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_a_month_of_history_from_a_plain_client_is_stored_and_counted_exactly(pipeline_env, compiled_proto,
                                                                             tmp_path, stored_user):
    end = dt.datetime.now(dt.timezone.utc).date()
    valid = history(35, end, seed=1)
    bad, reasons = bad_events(end - dt.timedelta(days=20))
    worker = pipeline_env.worker("w1").start()
    send_as_plain_client(compiled_proto, pipeline_env.bootstrap, pipeline_env.topics.user_actions,
                         valid[:len(valid) // 2] + bad + valid[len(valid) // 2:], tmp_path)
    check_exact(worker, valid, stored_user)
    stats = worker.stats()
    assert stats["dead_letters_by_reason"] == reasons
    assert (stats["delivered"], stats["rerouted"]) == (len(valid), 0)  # keyed by user as sent: no hop
    worker.stop()


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_history_behind_live_traffic_out_of_order_and_repeated_is_exact(pipeline_env, compiled_proto, tmp_path,
                                                                        stored_user):
    """Live traffic is in (yesterday's and today's so far: every partition has some, whatever the
    hour); then 35 days of history arrive, shuffled up to two days out of order, with a tenth of it
    sent twice: every valid event stored once, every published value equal to the store's."""
    end = dt.datetime.now(dt.timezone.utc).date()
    live = history(2, end, seed=2)
    worker = pipeline_env.worker("w1").start()
    send_as_plain_client(compiled_proto, pipeline_env.bootstrap, pipeline_env.topics.user_actions, live, tmp_path)
    check_exact(worker, live, stored_user)

    past = history(35, end - dt.timedelta(days=1), seed=3)
    rng = random.Random(4)
    shuffled = sorted(past, key=lambda e: e["start_epoch_ms"] + rng.uniform(-2, 2) * DAY_MS)
    repeated = shuffled + rng.sample(shuffled, len(shuffled) // 10)
    send_as_plain_client(compiled_proto, pipeline_env.bootstrap, pipeline_env.topics.user_actions, repeated, tmp_path)
    check_exact(worker, live + past, stored_user)
    stats = worker.stats()
    assert stats["dead_letters_by_reason"] == {} and stats["rerouted"] == 0
    assert stats["historical"] >= len(past) // 2  # most of it was weeks behind the live day
    worker.stop()
