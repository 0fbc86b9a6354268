"""The sink: retry with backoff through outages, refused rows found and set aside, idempotent inserts."""
import asyncio
import datetime as dt

import pytest

from streams.store.sink import (MILLISECOND_COLUMNS, PROFILE_COLUMNS, USER_ACTION_COLUMNS, ClickHouseWriter, RefusedRows,
                          RetryPolicy, batch_token, insert_isolating, to_columns, write_with_retry)


def run_inline(fn):
    async def call():
        return fn()
    return call()


def test_retries_with_backoff_until_the_write_succeeds():
    failures = iter([ConnectionError("ClickHouse down")] * 4)
    writes, sleeps = [], []

    def write():
        error = next(failures, None)
        if error:
            raise error
        writes.append("rows")

    async def sleep(seconds):
        sleeps.append(seconds)

    attempts = asyncio.run(write_with_retry(write, RetryPolicy(initial_backoff_s=0.5, max_backoff_s=2.0),
                                            "insert", sleep=sleep, run=run_inline))
    assert (attempts, writes) == (5, ["rows"])
    assert sleeps == [0.5, 1.0, 2.0, 2.0]  # doubling, capped


def test_an_error_without_a_message_is_retried_too(caplog):
    errors = iter([TimeoutError()])

    def write():
        error = next(errors, None)
        if error:
            raise error

    async def sleep(_):
        pass

    assert asyncio.run(write_with_retry(write, RetryPolicy(), "insert", sleep=sleep, run=run_inline)) == 2
    assert "insert failed (attempt 1): TimeoutError" in caplog.text


def test_gives_up_only_when_told_to():
    def write():
        raise ConnectionError("down")

    async def sleep(_):
        pass

    with pytest.raises(ConnectionError):
        asyncio.run(write_with_retry(write, RetryPolicy(max_attempts=3), "insert", sleep=sleep, run=run_inline))


def test_batch_token_names_the_offsets():
    assert batch_token("user-actions", {2: (10, 19), 0: (5, 7)}) == "user-actions:0@5-7,2@10-19"


def row(event_id: str, user: str = "u1") -> dict:
    values = {name: "" for name in USER_ACTION_COLUMNS}
    values.update(event_id=event_id, app="amundsen", command="search_table", event_name="Search Table", user=user,
                  ts=1_764_000_000_000, ds=dt.date(2025, 11, 24), is_weekend=0, start_epoch_ms=1, end_epoch_ms=2,
                  duration_ms=1, has_error=0, properties={}, result_index=None, ab_flags={}, scrubbed_fields=[],
                  kafka_partition=0, kafka_offset=0, ingested_at=1_764_000_000_000)
    return values


def insert_rows(writer: ClickHouseWriter, table: str, rows: list[dict], columns: tuple[str, ...], token: str) -> None:
    writer.insert_columns(table, to_columns(rows, columns), columns, token)


def test_columns_follow_the_table_order():
    columns = to_columns([row("a"), row("b")], USER_ACTION_COLUMNS)
    assert list(columns) == list(USER_ACTION_COLUMNS) and columns["event_id"] == ["a", "b"]


@pytest.mark.clickhouse
def test_a_retried_batch_is_stored_once_and_a_redelivered_event_collapses(ch):
    writer = ClickHouseWriter(ch)
    batch = [row(f"e{i}", user=f"u{i % 3}") for i in range(100)]
    insert_rows(writer, "user_actions", batch, USER_ACTION_COLUMNS, "user-actions:0@0-99")
    insert_rows(writer, "user_actions", batch, USER_ACTION_COLUMNS, "user-actions:0@0-99")  # the same batch, retried
    assert ch.query("SELECT count() FROM user_actions").result_rows == [(100,)]
    # after a crash the same events come back in a differently cut batch: the engine collapses them
    insert_rows(writer, "user_actions", batch[50:], USER_ACTION_COLUMNS, "user-actions:0@50-120")
    assert ch.query("SELECT count() FROM user_actions FINAL").result_rows == [(100,)]
    assert writer.stats.inserts == 3 and writer.stats.max_batch_rows == 100


@pytest.mark.clickhouse
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_every_kind_of_value_is_stored_as_it_was_sent(ch, compression):
    """Inserts travel as JSON, compressed for a server: milliseconds, maps, arrays, nulls and awkward
    text come back unchanged."""
    writer = ClickHouseWriter(ch, compression)
    text = 'quote " backslash \\ newline \n tab \t nul \x00 emoji \U0001F600 accents éü 中文'
    sent = row("e1") | {"ts": 1_764_000_123_457, "ingested_at": 1_764_000_999_001, "label": text,
                        "properties": {"k": text, "": "empty key"}, "ab_flags": {"flag": "on"},
                        "scrubbed_fields": ["a", text], "result_index": -7, "kafka_offset": 2**63 + 5,
                        "start_epoch_ms": -1, "duration_ms": 2**62}
    nulls = row("e2") | {"result_index": None}
    insert_rows(writer, "user_actions", [sent, nulls], USER_ACTION_COLUMNS, "t1")
    got = ch.query("SELECT toUnixTimestamp64Milli(ts), toUnixTimestamp64Milli(ingested_at), label, properties, "
                   "ab_flags, scrubbed_fields, result_index, kafka_offset, start_epoch_ms, duration_ms, ds "
                   "FROM user_actions ORDER BY event_id").result_rows
    assert got[0] == (1_764_000_123_457, 1_764_000_999_001, text, {"k": text, "": "empty key"}, {"flag": "on"},
                      ["a", text], -7, 2**63 + 5, -1, 2**62, dt.date(2025, 11, 24))
    assert got[1][6] is None

    profile = {"user": "u1", "email": "", "title": "SWE", "team": "data", "ab_flags": {}, "updated_at": 1_764_000_000_001}
    insert_rows(writer, "user_profiles", [profile], PROFILE_COLUMNS, "t2")
    assert ch.query("SELECT toUnixTimestamp64Milli(updated_at) FROM user_profiles").result_rows == [(1_764_000_000_001,)]
    # every time column the sink writes is sent as milliseconds -> seconds (a number alone is seconds in JSON)
    time_columns = ch.query("SELECT name FROM system.columns WHERE database = currentDatabase() AND "
                            "table IN ('user_actions', 'dead_letters', 'user_profiles') AND type LIKE 'DateTime%'")
    assert {name for (name,) in time_columns.result_rows} == MILLISECOND_COLUMNS


def test_only_compressions_a_server_reads_are_taken():
    with pytest.raises(ValueError, match="zstd"):
        ClickHouseWriter(client=None, compression="zip")


def isolate(writer: ClickHouseWriter, rows: list[dict], sleep=asyncio.sleep) -> list[tuple[int, str]]:
    """The sink's insert of a user_actions batch: what it returns is what ClickHouse refused."""
    return asyncio.run(insert_isolating(writer, "user_actions", to_columns(rows, USER_ACTION_COLUMNS),
                                        USER_ACTION_COLUMNS, "user-actions:0@0-99", RetryPolicy(), sleep))


def test_rows_refused_by_clickhouse_are_not_retried():
    attempts = []

    def write():
        attempts.append(1)
        raise RefusedRows("Code: 469. VIOLATED_CONSTRAINT")

    with pytest.raises(RefusedRows):
        asyncio.run(write_with_retry(write, RetryPolicy(), "insert", run=run_inline))
    assert len(attempts) == 1


@pytest.mark.clickhouse
def test_rows_clickhouse_refuses_are_found_and_every_other_row_is_stored(ch):
    """A constraint the rows must meet (as an operator may add): the batch is halved until the three
    rows that break it stand alone; the 97 others are stored, once."""
    ch.command("ALTER TABLE user_actions ADD CONSTRAINT no_poison CHECK command != 'poison'")
    writer = ClickHouseWriter(ch)
    rows = [row(f"e{i:03}") | ({"command": "poison"} if i in (7, 50, 93) else {}) for i in range(100)]
    refused = isolate(writer, rows)
    assert [index for index, _ in refused] == [7, 50, 93]
    assert all("VIOLATED_CONSTRAINT" in why and "no_poison" in why for _, why in refused)
    assert ch.query("SELECT count(), uniqExact(event_id), countIf(command = 'poison') FROM user_actions"
                    ).result_rows == [(97, 97, 0)]


@pytest.mark.clickhouse
def test_a_batch_mostly_refused_is_waited_for_like_an_outage_not_dead_lettered(ch, caplog):
    """Every row breaks the table's rule (a schema change gone wrong): that is the store's problem,
    so nothing is dead-lettered; once the rule is fixed, the whole batch is stored."""
    ch.command("ALTER TABLE user_actions ADD CONSTRAINT no_searches CHECK command != 'search_table'")
    waits = []

    async def sleep(seconds):
        waits.append(caplog.text)
        ch.command("ALTER TABLE user_actions DROP CONSTRAINT no_searches")

    assert isolate(ClickHouseWriter(ch), [row(f"e{i}") for i in range(100)], sleep) == []
    assert len(waits) == 1 and "refuses more than 16 of 100 rows" in waits[0]
    assert ch.query("SELECT count(), uniqExact(event_id) FROM user_actions FINAL").result_rows == [(100, 100)]


@pytest.mark.clickhouse
def test_a_value_that_cannot_be_serialised_is_one_refused_row(ch):
    writer = ClickHouseWriter(ch)
    rows = [row(f"e{i}") for i in range(10)]
    rows[4]["kafka_offset"] = 2**64  # past UInt64: no JSON number ClickHouse could read
    refused = isolate(writer, rows)
    assert [index for index, _ in refused] == [4] and "not serialisable" in refused[0][1]
    assert ch.query("SELECT count() FROM user_actions").result_rows == [(9,)]


@pytest.mark.clickhouse
def test_an_outage_is_waited_for_and_not_blamed_on_the_rows(ch):
    """The table is away (as in a migration gone wrong) on the first attempt: that is the server's
    problem, not the rows', so the whole batch is retried and stored, nothing refused."""
    ch.command("RENAME TABLE user_actions TO user_actions_away")
    waits = []

    async def sleep(seconds):
        waits.append(seconds)
        ch.command("RENAME TABLE user_actions_away TO user_actions")

    assert isolate(ClickHouseWriter(ch), [row(f"e{i}") for i in range(100)], sleep) == []
    assert len(waits) == 1
    assert ch.query("SELECT count() FROM user_actions").result_rows == [(100,)]


def test_a_clickhouse_server_that_is_down_is_waited_for_not_fatal():
    from streams.store.clickhouse import connect_and_migrate
    from conftest import free_port
    sleeps = []
    with pytest.raises(Exception):
        connect_and_migrate(f"http://tally:secret@127.0.0.1:{free_port()}/tally",
                            RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, max_attempts=4), sleep=sleeps.append)
    assert sleeps == [0.1, 0.2, 0.4]  # it retried, backing off, until told to stop


@pytest.mark.clickhouse
def test_an_embedded_directory_owned_by_another_process_says_so(tmp_path):
    import subprocess
    import sys
    from streams.store.clickhouse import connect_and_migrate
    owner = subprocess.Popen([sys.executable, "-c", "import sys, clickhouse_connect; "
                              f"c = clickhouse_connect.get_client(dsn='chdb://{tmp_path}'); c.command('SELECT 1'); "
                              "print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "ready"
        with pytest.raises(RuntimeError, match="Is another process .* using it"):
            connect_and_migrate(f"chdb://{tmp_path}", RetryPolicy(max_attempts=1))
    finally:
        owner.stdin.close()
        owner.wait()
