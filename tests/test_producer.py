"""The tracking SDK and `tally publish`: pure helpers first, then round trips through the real broker."""
from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_topic
from streams.ops.broker import Broker, create_topics, free_port
from streams.contract import SCHEMA_VERSION, UserAction, UserActionBatch, is_envelope, partition_for_user
from streams.producer import Tracker, action_logging
from streams.producer.arguments import REDACTED, is_secret_name, redact_secrets, to_json
from streams.producer.buffer import EventBuffer
from streams.producer.envelopes import pack_envelopes
from streams.producer.publish import action_from_json, action_to_json, parse_lines

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# --- helpers ---------------------------------------------------------------------------------------

def offline_tracker(**options) -> Tracker:
    """A tracker that only buffers (no sending thread), for tests of what gets recorded."""
    return Tracker("127.0.0.1:1", app="test-app", autostart=False, scrubber=None, **options)


def actions_of(record) -> list[UserAction]:
    """The actions a Kafka record carries: itself, or those of its UserActionBatch envelope."""
    if is_envelope(record.headers):
        return list(UserActionBatch.FromString(record.value).actions)
    return [UserAction.FromString(record.value)]


async def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Every record of `topic`: read to its end until `expected` actions are there (or `timeout`),
    then once more, where duplicates would show up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    records = await read_topic(bootstrap, topic)
    while sum(len(actions_of(r)) for r in records) < expected and loop.time() < deadline:
        await asyncio.sleep(0.5)
        records = await read_topic(bootstrap, topic)
    await asyncio.sleep(1.0)
    return await read_topic(bootstrap, topic)


def consume_actions(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, UserAction]]:
    """(record key, action) for every action on the topic, in envelopes or not."""
    records = asyncio.run(_consume(bootstrap, topic, expected))
    return [(r.key, action) for r in records for action in actions_of(r)]


# --- pure helpers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, secret", [
    ("password", True), ("db_password", True), ("passwd", True), ("client_secret", True),
    ("access_token", True), ("csrftoken", True), ("api_key", True), ("apiKey", True), ("Authorization", True),
    ("credentials", True), ("cookie", True), ("private_key", True), ("auth", True),
    ("connection", True), ("conn", True), ("dsn", True), ("warehouse_dsn", True), ("connection_string", True),
    ("database_url", True), ("connection_id", False), ("connector", False),
    ("max_tokens", False), ("table_key", False), ("author", False), ("user", False), ("index", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_redact_secrets_at_any_depth_without_touching_the_input():
    kwargs = {"table_key": "hive://gold.core/orders", "config": {"password": "hunter2", "rows": [{"token": "t"}]}}
    redacted = redact_secrets(kwargs)
    assert redacted == {"table_key": "hive://gold.core/orders",
                        "config": {"password": REDACTED, "rows": [{"token": REDACTED}]}}
    assert kwargs["config"]["password"] == "hunter2"


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")


@pytest.mark.parametrize("value, expected", [
    ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
    ({"when": Path("/tmp/x")}, '{"when":"/tmp/x"}'),
    ({(1, 2): "tuple key"}, '{"(1, 2)":"tuple key"}'),
    ({"s": {3}}, '{"s":"{3}"}'),
    ("ünï", '"ünï"'),
])
def test_to_json_stringifies_what_json_cannot_hold(value, expected):
    assert to_json(value) == expected


def test_to_json_never_raises():
    cycle: list = []
    cycle.append(cycle)
    json.loads(to_json(cycle))
    json.loads(to_json({"x": Unprintable()}))


@pytest.mark.parametrize("drop, kept, evicted, refused", [
    ("oldest", [3, 4, 5, 6, 7], 3, 0),
    ("newest", [0, 1, 2, 3, 4], 0, 3),
])
def test_buffer_drops_by_policy_and_counts(drop, kept, evicted, refused):
    buffer = EventBuffer(5, drop)
    stored = [buffer.put(i) for i in range(8)]
    assert stored == [True] * 5 + [False] * 3
    assert buffer.snapshot() == kept
    assert (buffer.evicted, buffer.refused, buffer.dropped) == (evicted, refused, 3)


def test_buffer_requeue_keeps_order_and_bound():
    buffer = EventBuffer(4, "oldest")
    for i in range(4):
        buffer.put(i)
    taken = buffer.take(2)
    buffer.put(4)
    buffer.put(5)
    buffer.requeue(taken)  # 0, 1 failed to send: back in front, and the oldest over the bound go
    assert buffer.snapshot() == [2, 3, 4, 5]
    assert buffer.evicted == 2


# --- what the decorator and track() record (no broker) ---------------------------------------------

def test_decorator_returns_and_raises_exactly_what_the_function_does():
    tracker = offline_tracker()
    result = {"rows": 3}

    @tracker.action_logging
    def get_table(table_key, *, index="0"):
        return result

    class Boom(Exception):
        pass

    boom = Boom("broken")

    @tracker.action_logging
    def fail(x):
        raise boom

    assert get_table("hive://gold.core/orders", index="2") is result
    with pytest.raises(Boom) as raised:
        fail(1)
    assert raised.value is boom
    assert raised.value.__traceback__ is not None
    assert get_table.__name__ == "get_table"
    ok, failed = tracker.buffered_events()
    assert (ok.command, ok.output, ok.error) == ("get_table", '{"rows":3}', "")
    assert (failed.command, failed.output, failed.error) == ("fail", "", "Boom: broken")


def test_decorator_records_amundsen_fields():
    tracker = offline_tracker(user_provider=lambda: "ada.lovelace@example.com", host_name="web-1")

    @tracker.action_logging
    def _get_table_metadata(table_key, *, index, source, when=None):
        return {"table": table_key, "columns": 12}

    _get_table_metadata("hive://gold.core/orders", index="2", source="search_results", when=Path("/x"))
    (action,) = tracker.buffered_events()
    assert action.command == "_get_table_metadata"
    assert action.user == "ada.lovelace@example.com"
    assert action.host_name == "web-1"
    assert action.app == "test-app"
    assert action.schema_version == SCHEMA_VERSION
    assert json.loads(action.pos_args_json) == ["hive://gold.core/orders"]
    assert json.loads(action.keyword_args_json) == {"index": "2", "source": "search_results", "when": "/x"}
    assert json.loads(action.output) == {"table": "hive://gold.core/orders", "columns": 12}
    assert 0 < action.start_epoch_ms <= action.end_epoch_ms
    assert action.event_id[14] == "7"  # UUIDv7


def test_secret_arguments_never_recorded_in_clear():
    tracker = offline_tracker()

    @tracker.action_logging
    def connect(host, password, *, api_key, options):
        return "ok"

    connect("db.internal", "hunter2", api_key="k-123", options={"Authorization": "Bearer x", "timeout": 3})
    tracker.track("warehouse_connection.updated", "u@example.com", password="hunter2", warehouse="snowflake")
    recorded = "".join(str(a) for a in tracker.buffered_events())
    for secret in ("hunter2", "k-123", "Bearer x"):
        assert secret not in recorded
    decorated, tracked = tracker.buffered_events()
    assert json.loads(decorated.pos_args_json) == ["db.internal", REDACTED]
    assert json.loads(decorated.keyword_args_json) == {"api_key": REDACTED,
                                                       "options": {"Authorization": REDACTED, "timeout": 3}}
    assert dict(tracked.properties) == {"password": REDACTED, "warehouse": "snowflake"}


def test_text_that_has_no_utf8_form_is_sent_with_replacement_characters():
    """A file name read with surrogateescape holds half a surrogate pair: no Protobuf string can carry
    it, so it is sent with U+FFFD in its place rather than not at all."""
    tracker = offline_tracker()

    @tracker.action_logging
    def open_file(path):
        return None

    open_file("/data/\udcffreport.csv")
    tracker.track("file.opened", "ann", path="/data/\udcffreport.csv")
    decorated, tracked = tracker.buffered_events()
    assert json.loads(decorated.pos_args_json) == ["/data/\ufffdreport.csv"]
    assert dict(tracked.properties) == {"path": "/data/\ufffdreport.csv"}
    assert tracker.stats().internal_errors == 0


def test_output_is_bounded_and_user_falls_back_to_default():
    def broken_provider():
        raise LookupError("no request context")

    tracker = offline_tracker(user_provider=broken_provider, default_user="anonymous@example.com")

    @tracker.action_logging
    def big():
        return "x" * 10_000

    assert big() == "x" * 10_000
    (action,) = tracker.buffered_events()
    assert action.user == "anonymous@example.com"
    assert len(action.output.encode()) <= 4096


def test_tracking_failures_never_reach_the_caller():
    class ExplodingScrubber:
        def scrub_action(self, action):
            raise RuntimeError("policy bug")

    tracker = Tracker("127.0.0.1:1", app="t", autostart=False, scrubber=ExplodingScrubber())

    @tracker.action_logging
    def odd(value):
        return value

    weird = Unprintable()
    assert odd(weird) is weird
    tracker.track("x", None, thing=Unprintable())
    assert tracker.stats().tracked == 2


def test_bare_action_logging_runs_the_function_before_configure():
    @action_logging
    def add(a, b):
        return a + b

    assert add(2, 3) == 5


def test_decorator_on_async_functions():
    tracker = offline_tracker()

    @tracker.action_logging
    async def search_table(*, search_term):
        await asyncio.sleep(0)
        return {"total_results": 3}

    assert asyncio.run(search_table(search_term="orders")) == {"total_results": 3}
    (action,) = tracker.buffered_events()
    assert (action.command, json.loads(action.keyword_args_json)) == ("search_table", {"search_term": "orders"})


def test_scrubber_is_applied_before_sending():
    class DropEmails:
        def scrub_action(self, action):
            action.user = "pseudo-" + str(len(action.user))
            return ["user"]

    tracker = Tracker("127.0.0.1:1", app="t", autostart=False, scrubber=DropEmails())
    tracker.track("x", "ada@example.com")
    ((key, value, _, shard_user),) = tracker._sender.serialize(tracker._buffer.snapshot())
    assert UserAction.FromString(value).user == "pseudo-15"
    assert key == b"pseudo-15"  # the key never carries the id in clear either
    assert shard_user == "ada@example.com"  # but it goes to that id's partition, where the pipeline takes it


def test_envelopes_pack_each_partitions_events_in_order():
    serialized = [(f"user{i % 5}".encode(), UserAction(event_id=f"e{i}", user=f"user{i % 5}").SerializeToString(), i)
                  for i in range(40)]
    messages = pack_envelopes(serialized, partitions=3, max_bytes=200)
    unpacked = []
    for key, value, partition, headers, items in messages:
        actions = list(UserActionBatch.FromString(value).actions)
        assert is_envelope(headers) and len(value) <= 200 and len(actions) == len(items)
        assert all(partition_for_user(a.user, 3) == partition for a in actions)
        assert key == actions[0].user.encode()
        unpacked.append([a.event_id for a in actions])
    assert len(messages) > 3  # the byte limit cut some partitions' events into several envelopes
    for user in range(5):  # each user's events stay in their order
        ids = [e for chunk in unpacked for e in chunk if int(e[1:]) % 5 == user]
        assert ids == sorted(ids, key=lambda e: int(e[1:]))
    assert sorted(item for *_, items in messages for item in items) == list(range(40))


@pytest.mark.kafka
def test_envelopes_reach_kafka_in_their_users_partitions(bootstrap, new_topic):
    topic = new_topic("sdk-env", partitions=4)
    tracker = Tracker(bootstrap, app="amundsen", topic=topic, scrubber=None)
    users = [f"user{i}@example.com" for i in range(12)]
    for i in range(300):
        tracker.track("search_table", users[i % 12], n=i)
    assert tracker.flush(timeout=60)
    tracker.close()
    records = asyncio.run(_consume(bootstrap, topic, expected=300))
    assert all(is_envelope(r.headers) for r in records) and len(records) < 300
    actions = [(r.partition, a) for r in records for a in actions_of(r)]
    assert sorted(int(a.properties["n"]) for _, a in actions) == list(range(300))
    assert all(partition == partition_for_user(a.user, 4) for partition, a in actions)
    assert tracker.stats().delivered == 300


# --- JSON lines for tally publish ------------------------------------------------------------------

def test_action_from_json_fills_defaults():
    action = action_from_json({"command": "SearchSubmitted", "user": "u@example.com", "start_epoch_ms": 1700000000000,
                               "properties": {"query": "func main", "results": 3}}, default_app="shell")
    assert (action.app, action.end_epoch_ms, action.schema_version) == ("shell", 1700000000000, SCHEMA_VERSION)
    assert dict(action.properties) == {"query": "func main", "results": "3"}
    assert action.event_id and action.event_id[14] == "7"


@pytest.mark.parametrize("line, reason", [
    ([1, 2], "expected a JSON object"),
    ({"command": "x", "user": "u", "colour": "red"}, "unknown field 'colour'"),
    ({"command": "x", "user": "u", "start_epoch_ms": "yesterday"}, "'start_epoch_ms' must be an integer"),
    ({"command": "x", "user": "u", "start_epoch_ms": 1.5}, "'start_epoch_ms' must be an integer"),
    ({"command": "x", "user": 7}, "'user' must be a string"),
    ({"command": "x"}, "missing 'user'"),
    ({"user": "u"}, "missing 'command'"),
    ({"command": "x", "user": "u", "properties": [1]}, "'properties' must be an object"),
])
def test_action_from_json_names_the_problem(line, reason):
    with pytest.raises(ValueError, match=reason):
        action_from_json(line, default_app="shell")


def test_action_from_json_needs_an_app():
    with pytest.raises(ValueError, match="missing 'app'"):
        action_from_json({"command": "x", "user": "u"})


def test_json_round_trip():
    action = action_from_json({"command": "dashboard.viewed", "user": "u@example.com", "app": "bi",
                               "start_epoch_ms": 1, "end_epoch_ms": 5, "properties": {"dashboard_id": "d-1"}})
    assert action_from_json(json.loads(json.dumps(action_to_json(action)))) == action


def test_parse_lines_reports_line_numbers():
    lines = ['{"command": "a", "user": "u"}', "", "{oops", '{"command": "b"}']
    results = [(number, action is not None, reason) for number, action, reason in parse_lines(lines, "shell")]
    assert [r[:2] for r in results] == [(1, True), (3, False), (4, False)]
    assert results[1][2].startswith("not JSON")
    assert results[2][2] == "missing 'user'"


# --- through the real broker -----------------------------------------------------------------------

@pytest.mark.kafka
def test_decorator_round_trip_into_kafka(bootstrap, new_topic):
    topic = new_topic("sdk")
    tracker = Tracker(bootstrap, app="amundsen", topic=topic, scrubber=None, host_name="frontend-1",
                      user_provider=lambda: "ada.lovelace@example.com", envelopes=False)

    @tracker.action_logging
    def _get_table_metadata(*, table_key, index, source):
        return {"columns": 12}

    @tracker.action_logging
    def _update_table_description(table_key, description):
        raise PermissionError("read-only table")

    @tracker.action_logging
    async def search_table(search_term, page_index=0):
        return {"total_results": 3}

    _get_table_metadata(table_key="hive://gold.core/orders", index="2", source="search_results")
    with pytest.raises(PermissionError):
        _update_table_description("hive://gold.core/orders", "new text")
    assert asyncio.run(search_table("orders")) == {"total_results": 3}
    tracker.track("SearchSubmitted", "grace.hopper@example.com", query="func main", results_count=37)
    assert tracker.flush(timeout=60)
    tracker.close()

    received = consume_actions(bootstrap, topic, expected=4)
    assert len(received) == 4
    by_command = {action.command: (key, action) for key, action in received}
    key, meta = by_command["_get_table_metadata"]
    assert key == b"ada.lovelace@example.com"
    assert (meta.user, meta.app, meta.host_name, meta.schema_version) == (
        "ada.lovelace@example.com", "amundsen", "frontend-1", SCHEMA_VERSION)
    assert json.loads(meta.keyword_args_json) == {"table_key": "hive://gold.core/orders", "index": "2",
                                                  "source": "search_results"}
    assert (meta.pos_args_json, meta.output, meta.error) == ("[]", '{"columns":12}', "")
    assert 0 < meta.start_epoch_ms <= meta.end_epoch_ms
    _, failed = by_command["_update_table_description"]
    assert failed.error == "PermissionError: read-only table"
    assert json.loads(failed.pos_args_json) == ["hive://gold.core/orders", "new text"]
    _, searched = by_command["search_table"]
    assert json.loads(searched.pos_args_json) == ["orders"]
    key, submitted = by_command["SearchSubmitted"]
    assert key == b"grace.hopper@example.com"
    assert dict(submitted.properties) == {"query": "func main", "results_count": "37"}
    assert len({action.event_id for _, action in received}) == 4
    assert tracker.stats().delivered == 4


@pytest.mark.kafka
def test_broker_down_at_start_then_up_delivers_each_event_once(tmp_path):
    port = free_port()
    late_broker = Broker(home=tmp_path / "late-kafka", port=port, controller_port=free_port(), partitions=2)
    tracker = Tracker(late_broker.bootstrap, app="t", topic="late-actions", scrubber=None,
                      reconnect_backoff_s=(0.2, 1.0))
    try:
        for i in range(50):
            tracker.track("ping", f"user{i % 7}@example.com", n=i)  # returns at once with no broker
        assert tracker.stats().buffered == 50
        assert not tracker.flush(timeout=0.5)
        late_broker.start()
        asyncio.run(create_topics(late_broker.bootstrap, {"late-actions": 2}))
        assert tracker.flush(timeout=90)
        tracker.close()
        received = consume_actions(late_broker.bootstrap, "late-actions", expected=50)
    finally:
        late_broker.stop(timeout=5)  # a throwaway broker: no need to wait for a clean shutdown
    event_ids = [action.event_id for _, action in received]
    assert len(event_ids) == 50
    assert len(set(event_ids)) == 50
    assert sorted(int(action.properties["n"]) for _, action in received) == list(range(50))
    assert tracker.stats().delivered == 50 and tracker.stats().dropped == 0


@pytest.mark.kafka
@pytest.mark.parametrize("drop, delivered", [("oldest", [3, 4, 5, 6, 7]), ("newest", [0, 1, 2, 3, 4])])
def test_overflow_drops_exactly_the_configured_events(bootstrap, new_topic, caplog, drop, delivered):
    topic = new_topic("overflow")
    tracker = Tracker(bootstrap, app="t", topic=topic, scrubber=None, buffer_size=5, drop=drop, autostart=False)
    for i in range(8):
        tracker.track("ping", "u@example.com", n=i)  # the sender is not running: the buffer fills up
    assert tracker.stats().dropped == 3
    with caplog.at_level(logging.WARNING, logger="streams.producer"):
        tracker.start()
        assert tracker.flush(timeout=60)
        tracker.close()
    received = consume_actions(bootstrap, topic, expected=5)
    assert sorted(int(action.properties["n"]) for _, action in received) == delivered
    drop_logs = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drop_logs) == 1 and drop_logs[0].startswith("tally tracker: dropped 3 events")


@pytest.mark.kafka
def test_tracking_from_asyncio_code(bootstrap, new_topic):
    topic = new_topic("async")
    tracker = Tracker(bootstrap, app="t", topic=topic, scrubber=None)

    async def handler(i: int) -> None:
        tracker.track("request.handled", "u@example.com", n=i)  # only enqueues; never awaits the network
        await asyncio.sleep(0)

    async def main() -> bool:
        await asyncio.gather(*(handler(i) for i in range(20)))
        return await tracker.aflush(timeout=60)

    assert asyncio.run(main())
    tracker.close()
    assert len(consume_actions(bootstrap, topic, expected=20)) == 20


@pytest.mark.kafka
def test_publish_cli_with_good_and_bad_lines(bootstrap, new_topic, tmp_path):
    topic = new_topic("publish")
    lines = [
        {"command": "SearchSubmitted", "user": "ada@example.com", "start_epoch_ms": 1700000000000,
         "properties": {"query": "func main"}},
        "this is not json",
        {"command": "dashboard.viewed", "user": "grace@example.com", "app": "bi", "event_id": "fixed-id-1"},
        {"command": "x", "user": "alan@example.com", "start_epoch_ms": "noon"},
        {"command": "y"},
        {"command": "chart.created", "user": "alan@example.com", "end_epoch_ms": 1700000000100,
         "start_epoch_ms": 1700000000000},
    ]
    path = tmp_path / "actions.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "streams.cli", "publish", str(path), "--bootstrap", bootstrap,
                           "--topic", topic, "--app", "shell"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "published 3, rejected 3",
        "no worker of group 'tally' is running: the events wait in Kafka until one starts (`tally worker`)"]
    errors = done.stderr.strip().splitlines()
    assert errors[0].startswith("line 2: not JSON")
    assert errors[1] == "line 4: 'start_epoch_ms' must be an integer, got \"noon\""
    assert errors[2] == "line 5: missing 'user'"

    received = consume_actions(bootstrap, topic, expected=3)
    by_command = {action.command: (key, action) for key, action in received}
    assert sorted(by_command) == ["SearchSubmitted", "chart.created", "dashboard.viewed"]
    key, search = by_command["SearchSubmitted"]
    assert (key, search.app, search.properties["query"]) == (b"ada@example.com", "shell", "func main")
    assert by_command["dashboard.viewed"][1].event_id == "fixed-id-1"
    assert by_command["dashboard.viewed"][1].app == "bi"
    assert by_command["chart.created"][1].end_epoch_ms == 1700000000100


@pytest.mark.kafka
def test_publish_cli_from_stdin_all_good(bootstrap, new_topic):
    topic = new_topic("stdin")
    text = "\n".join(json.dumps({"command": "ping", "user": f"u{i}@example.com"}) for i in range(10)) + "\n"
    done = subprocess.run([sys.executable, "-m", "streams.cli", "publish", "-", "--bootstrap", bootstrap,
                           "--topic", topic, "--app", "shell"], input=text, capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "published 10, rejected 0"
    assert len(consume_actions(bootstrap, topic, expected=10)) == 10


@pytest.mark.kafka
def test_events_buffered_at_exit_are_delivered(bootstrap, new_topic):
    topic = new_topic("atexit")
    script = (
        "from streams import producer\n"
        f"producer.configure({bootstrap!r}, app='script', topic={topic!r}, scrubber=None)\n"
        "for i in range(5):\n"
        "    producer.track('job.step', 'cron@example.com', step=i)\n"
        # no flush, no close: the interpreter's exit delivers them
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    received = consume_actions(bootstrap, topic, expected=5)
    assert sorted(int(action.properties["step"]) for _, action in received) == [0, 1, 2, 3, 4]


@pytest.mark.kafka
def test_producer_config_may_override_the_trackers_own_settings(bootstrap, new_topic):
    topic = new_topic("sdk-config")
    tracker = Tracker(bootstrap, app="t", topic=topic, scrubber=None, producer_config={"linger_ms": 20, "client_id": "catalog-frontend"})
    for i in range(5):
        tracker.track("ping", f"user{i}", n=i)
    assert tracker.flush(timeout=60)
    tracker.close()
    assert len(consume_actions(bootstrap, topic, expected=5)) == 5 and tracker.stats().delivered == 5


def test_publish_of_a_missing_file_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "streams.cli", "publish", str(tmp_path / "missing.jsonl"),
                           "--bootstrap", "127.0.0.1:1"], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"cannot read {tmp_path / 'missing.jsonl'}: No such file or directory; give a JSON-lines file, or - for standard input"]


def test_a_json_line_cut_short_is_reported_where_it_ends():
    reasons = [reason for _, _, reason in parse_lines(['{"command": "x", "user": "u"\n', '{not json}\n'], "a")]
    assert reasons == ["not JSON: it ends before its object or list is closed (column 29)",
                       "not JSON: Expecting property name enclosed in double quotes at column 2"]
