"""Sink: batches of rows into ClickHouse, idempotently, with retry and backpressure.

Idempotency has two layers, because either alone leaves a gap:
- every insert carries `insert_deduplication_token` made from the batch's Kafka offsets, so a batch
  retried after a ClickHouse error (same rows, same token) is dropped by the server
  (`non_replicated_deduplication_window` on the tables; replicated tables do it by default);
- `user_actions` is a ReplacingMergeTree keyed by event_id, so rows redelivered after a worker crash,
  which arrive in differently cut batches and so with other tokens, still collapse to one.
The caller commits Kafka offsets only after `write` returned: rows are durable first.

A failed insert is retried until it works (an outage holds the worker, it loses nothing), unless
ClickHouse refused it for the rows it carried: those are found by halving the batch, and the caller
dead-letters them while the rest is stored, so one value no store can hold does not stop the flow.
"""
from __future__ import annotations

import asyncio
import json
import logging
import operator
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from clickhouse_connect.driver.exceptions import DatabaseError
from google.protobuf.json_format import MessageToDict

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    from backports import zstd

from streams.store.clickhouse import first_line
from streams.contract import DeadLetter, UserAction

log = logging.getLogger(__name__)

USER_ACTION_COLUMNS = (
    "event_id", "app", "command", "event_name", "user", "ts", "ds", "is_weekend", "start_epoch_ms",
    "end_epoch_ms", "duration_ms", "host_name", "session_id", "pos_args_json", "keyword_args_json", "output",
    "error", "has_error", "target_id", "target_type", "label", "location", "value", "properties", "search_term",
    "result_index", "source", "resource_key", "user_email", "user_title", "user_team", "ab_flags",
    "scrubbed_fields", "kafka_partition", "kafka_offset", "ingested_at")

DEAD_LETTER_COLUMNS = (
    "reason", "detail", "source_topic", "source_partition", "source_offset", "received_at", "payload_size",
    "payload_sha256", "scrubbed_payload", "event_id", "app", "user", "scrubbed_fields", "letter")

PROFILE_COLUMNS = ("user", "email", "title", "team", "ab_flags", "updated_at")


# DateTime64(3) columns, held as epoch milliseconds; in JSON, ClickHouse reads a number as seconds
MILLISECOND_COLUMNS = frozenset({"ts", "ingested_at", "received_at", "updated_at"})
_to_seconds = (1000).__rtruediv__  # ms -> s; the shortest repr of ms / 1000 has the same 3 decimals


def json_columns(data: dict[str, list], columns: tuple[str, ...]) -> bytes:
    """The rows as one JSONColumns document ({"column": [values]}), made by orjson in C in about
    1 us a row: the interpreter lock is held that long instead of the ~3.5 us clickhouse-connect's
    Native serialisation takes, and ClickHouse parses it in its own threads without the lock."""
    return orjson.dumps({name: list(map(_to_seconds, data[name])) if name in MILLISECOND_COLUMNS else data[name]
                         for name in columns})


# ClickHouse errors that blame the rows an insert carried, not the server: the same rows are refused
# again however often they are sent. Anything else (a network error, a missing table, too many
# parts, memory) is an outage, retried until it passes.
ROW_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    395,  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a throwIf in a column's expression)
    469,  # VIOLATED_CONSTRAINT
})


class RefusedRows(Exception):
    """An insert refused for the rows it carried: ClickHouse's row errors, or values that could not
    be serialised at all. Sending the same rows again cannot help."""


def row_count(data: dict[str, list]) -> int:
    """Rows in a batch held as columns (every column has one value per row)."""
    return len(next(iter(data.values()), ()))


def to_columns(rows: list[dict], columns: tuple[str, ...]) -> dict[str, list]:
    """Row dicts -> one list per column, by name (what `insert_columns` takes); each column's pass
    runs in C (map over itemgetter), not as a Python loop."""
    return {name: list(map(operator.itemgetter(name), rows)) for name in columns}


def dead_letter_row(letter: DeadLetter) -> dict:
    payload = ""
    if letter.scrubbed_payload:
        action = UserAction()
        action.ParseFromString(letter.scrubbed_payload)
        payload = json.dumps(MessageToDict(action, preserving_proto_field_name=True), ensure_ascii=False)
    return {"reason": letter.reason, "detail": letter.detail, "source_topic": letter.source_topic,
            "source_partition": letter.source_partition, "source_offset": letter.source_offset,
            "received_at": letter.received_epoch_ms, "payload_size": letter.payload_size,
            "payload_sha256": letter.payload_sha256, "scrubbed_payload": payload, "event_id": letter.event_id,
            "app": letter.app, "user": letter.user, "scrubbed_fields": list(letter.scrubbed_fields),
            # apart from the other letters of the same message (an envelope's), equal for a redelivered copy
            "letter": zlib.crc32(f"{letter.payload_sha256}:{letter.event_id}:{letter.reason}".encode())}


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 30.0
    max_attempts: int | None = None  # None: retry until it works (the worker stops consuming meanwhile)

    def waits(self):
        """The wait before each retry, doubling up to `max_backoff_s`; it runs out once
        `max_attempts` attempts have been made."""
        wait, attempt = self.initial_backoff_s, 1
        while self.max_attempts is None or attempt < self.max_attempts:
            yield wait
            wait, attempt = min(wait * 2, self.max_backoff_s), attempt + 1


@dataclass
class SinkStats:
    inserts: int = 0
    rows: int = 0
    insert_seconds: float = 0.0
    insert_cpu_seconds: float = 0.0  # the inserting thread's CPU: serialising rows, and what chDB runs in it
    last_batch_rows: int = 0
    max_batch_rows: int = 0
    failed_inserts: int = 0  # inserts ClickHouse did not take (each retry of an outage, each refused part)
    last_failure_at: float = 0.0  # monotonic time of the last insert ClickHouse did not take
    last_success_at: float = 0.0  # ... and of the last it took


class ClickHouseWriter:
    """Inserts into one ClickHouse database. Thread-safe: calls are serialised with a lock, since an
    embedded chDB session and the worker's query endpoint share one client.

    `compression="zstd"` sends each insert compressed (level 1: about 7x smaller, ~0.8 us a row,
    outside the interpreter lock): what a server across a network wants; embedded, nothing crosses
    a wire."""

    def __init__(self, client, compression: str | None = None) -> None:
        if compression not in (None, "zstd"):
            raise ValueError(f"insert compression {compression!r}: expected zstd or None")
        self.client = client
        self.compression = compression
        self.lock = threading.Lock()
        self.stats = SinkStats()

    def insert_columns(self, table: str, data: dict[str, list], columns: tuple[str, ...], dedup_token: str) -> None:
        """Insert rows held as columns (name -> one value per row); `columns` names what to write."""
        rows = row_count(data)
        if not rows:
            return
        started, started_cpu = time.perf_counter(), time.thread_time()
        try:
            body = json_columns(data, columns)
        except (TypeError, ValueError) as exc:  # orjson's JSONEncodeError is a TypeError
            raise RefusedRows(f"not serialisable: {exc}") from exc
        if self.compression:
            body = zstd.compress(body, level=1)
        with self.lock:  # counted under the lock too: whoever reads the rows next sees them counted
            try:
                self.client.raw_insert(table, list(columns), body, fmt="JSONColumns", compression=self.compression,
                                       settings={"insert_deduplication_token": dedup_token})
            except Exception as exc:
                self.stats.failed_inserts += 1
                self.stats.last_failure_at = time.monotonic()
                if isinstance(exc, DatabaseError) and exc.code in ROW_ERROR_CODES:
                    raise RefusedRows(first_line(exc, limit=1000)) from exc
                raise
            stats = self.stats
            stats.insert_seconds += time.perf_counter() - started
            stats.insert_cpu_seconds += time.thread_time() - started_cpu
            stats.inserts += 1
            stats.last_success_at = time.monotonic()
            stats.rows += rows
            stats.last_batch_rows = rows
            stats.max_batch_rows = max(stats.max_batch_rows, rows)

    def open_sessions(self, partition: int, since_ms: int) -> dict[str, tuple[str, int, int]]:
        """Each user's latest session in an input partition's stored rows since `since_ms`, as
        user -> (session id, first event ms, last event ms): what a new owner of the partition
        continues, so a restart does not split sessions."""
        with self.lock:
            rows = self.client.query(OPEN_SESSIONS_SQL, parameters={"partition": partition, "since": since_ms}).result_rows
        sessions: dict[str, tuple[str, int, int]] = {}
        for user, session_id, first_ms, last_ms in rows:
            if user not in sessions or last_ms > sessions[user][2]:
                sessions[user] = (session_id, int(first_ms), int(last_ms))
        return sessions


    def partition_counts(self, partition: int, keys: set[tuple[str, str, int]]) -> dict[tuple[str, str, int], int]:
        """Exact distinct users of one input partition's stored rows for each (metric, app or "*",
        day ordinal the window ends on / week's Monday): the live state's counts, recounted."""
        ends = [(metric, app, day - EPOCH_ORDINAL) for metric, app, day in keys]
        low = min(day for _, _, day in ends) - 27
        high = max(day + (6 if metric == "calendar_wau" else 0) for metric, _, day in ends)
        with self.lock:
            rows = self.client.query(PARTITION_COUNTS_SQL, parameters={
                "partition": partition, "low": max(low, 0), "high": high, "keys": ends}).result_rows
        return {(metric, app, int(day) + EPOCH_ORDINAL): int(users) for metric, app, day, users in rows}


EPOCH_ORDINAL = 719_163  # datetime.date(1970, 1, 1).toordinal(): ClickHouse Dates count days from there

# Each stored (app, user, day) of the partition, fanned out to every window it falls in, for the
# all-apps scope too; only the windows asked for are counted.
PARTITION_COUNTS_SQL = """
SELECT window.1 AS metric, scope, end_day, uniqExact(user)
FROM (
    SELECT app, user, toUInt32(ds) AS d FROM user_actions
    WHERE kafka_partition = {partition:UInt16} AND ds BETWEEN toDate({low:UInt32}) AND toDate({high:UInt32})
    GROUP BY app, user, d
)
ARRAY JOIN [app, '*'] AS scope
ARRAY JOIN [('dau', 1), ('wau', 7), ('mau', 28), ('calendar_wau', 0)] AS window
ARRAY JOIN if(window.2 = 0, [toUInt32(toMonday(toDate(d)))], arrayMap(k -> d + k, range(window.2))) AS end_day
WHERE (metric, scope, end_day) IN {keys:Array(Tuple(String, String, UInt32))}
GROUP BY metric, scope, end_day
"""

OPEN_SESSIONS_SQL = """
SELECT user, session_id, toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts))
FROM user_actions
WHERE kafka_partition = {partition:UInt16} AND ts >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
GROUP BY user, session_id
"""


async def write_with_retry(write: Callable[[], None], policy: RetryPolicy, what: str,
                           sleep=asyncio.sleep, run=None) -> int:
    """Run the blocking `write` (in a thread) until it succeeds; returns the number of attempts.
    `RefusedRows` is raised at once: the same rows would be refused again.

    While this waits the agent does not return, so Faust acks nothing and the consumer stops
    fetching once its buffer is full: backpressure instead of loss."""
    run = run or (lambda fn: asyncio.get_running_loop().run_in_executor(None, fn))
    waits = policy.waits()
    attempt = 0
    while True:
        attempt += 1
        try:
            await run(write)
            if attempt > 1:
                log.warning("%s succeeded after %d attempts", what, attempt)
            return attempt
        except RefusedRows:
            raise
        except Exception as exc:
            wait = next(waits, None)
            if wait is None:
                raise
            log.error("%s failed (attempt %d): %s; retrying in %.1fs", what, attempt, first_line(exc), wait)
            await sleep(wait)


class TooManyRefused(Exception):
    """More of a batch refused than bad events explain: the table and the rows disagree (a schema
    change, a constraint on everything), which is the store's problem, not the events'."""


def refused_rows_limit(rows: int) -> int:
    """How many refused rows a batch may dead-letter: one in a thousand, at least 16 (Arroyo's DLQ
    limit has the same idea: past it, a consumer should stop rather than dead-letter everything)."""
    return max(16, rows // 1000)


async def insert_isolating(writer: ClickHouseWriter, table: str, data: dict[str, list], columns: tuple[str, ...],
                           token: str, policy: RetryPolicy, sleep=asyncio.sleep) -> list[tuple[int, str]]:
    """Insert rows held as columns, retried through outages (`write_with_retry`). When ClickHouse
    refuses a part for its rows, the part is halved until each refused row stands alone; those come
    back as (row index, why), every other row is stored. One bad row in n costs about 2 log2(n)
    more inserts (30 for 20k rows).

    Past `refused_rows_limit` refused rows the batch is waited for like an outage instead (its
    parts that were stored are dropped as duplicates when the same parts are sent again)."""
    rows = row_count(data)
    limit, waits = refused_rows_limit(rows), policy.waits()
    while True:
        found: list[tuple[int, str]] = []
        try:
            await _insert_halving(writer, table, data, columns, token, policy, sleep, 0, found, limit)
            return found
        except TooManyRefused as exc:
            wait = next(waits, None)
            if wait is None:
                raise
            log.error("ClickHouse refuses more than %d of %d rows for %s (%s): the table and the rows disagree; "
                      "waiting %.1fs as for an outage", limit, rows, table, exc, wait)
            await sleep(wait)


async def _insert_halving(writer: ClickHouseWriter, table: str, data: dict[str, list], columns: tuple[str, ...],
                          token: str, policy: RetryPolicy, sleep, first_row: int, found: list, limit: int) -> None:
    rows = row_count(data)
    if not rows:
        return
    try:
        await write_with_retry(lambda: writer.insert_columns(table, data, columns, token), policy,
                               f"insert of {rows} rows into {table}", sleep)
        return
    except RefusedRows as refused:
        if rows == 1:
            found.append((first_row, str(refused)))
            if len(found) > limit:
                raise TooManyRefused(str(refused)) from None
            return
    half = rows // 2
    for low, high in ((0, half), (half, rows)):
        part = {name: values[low:high] for name, values in data.items()}
        part_token = f"{token}#{first_row + low}-{first_row + high - 1}"
        await _insert_halving(writer, table, part, columns, part_token, policy, sleep, first_row + low, found, limit)


def batch_token(topic: str, offsets: dict[int, tuple[int, int]]) -> str:
    """Deduplication token for the rows of a batch: its topic and per-partition offset ranges."""
    return topic + ":" + ",".join(f"{p}@{lo}-{hi}" for p, (lo, hi) in sorted(offsets.items()))
