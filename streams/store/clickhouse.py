"""ClickHouse connection and versioned migrations, the same for embedded chDB and a server.

`chdb:///path` opens the embedded engine in this process (one process may own a data
directory at a time); `http(s)://host:8123/db` talks to a server.
"""
from __future__ import annotations

import logging
import os
import re
import time
from importlib import resources
from urllib.parse import parse_qs, urlparse

import clickhouse_connect

log = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """The store cannot be opened, and waiting would not help (the message says what to do)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An error in one line for a log (drivers wrap ClickHouse errors in several; some have none)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__

_embedded: dict[tuple[str, str], object] = {}  # (path, database) -> client, all on one path


def connect(dsn: str):
    """A clickhouse-connect client for `dsn`.

    `chdb:///path[?database=db]`: the embedded engine. One process can hold one chDB path at a
    time, so opening another path closes the clients of the previous one first.
    `http(s)://user:pass@host:8123/db`: a server; the database is created if missing.
    """
    url = urlparse(dsn)
    database = (parse_qs(url.query).get("database", [""])[0] if url.scheme == "chdb"
                else url.path.strip("/")) or "default"
    if url.scheme == "chdb":
        path = url.path
        if any(open_path != path for open_path, _ in _embedded):
            close_all()
        if (path, database) not in _embedded:
            os.makedirs(path, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            if database != "default":
                client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
                client = clickhouse_connect.get_client(dsn=f"chdb://{path}", database=database)
            _embedded[(path, database)] = client
        return _embedded[(path, database)]
    server = dict(host=url.hostname, port=url.port or 8123, username=url.username or "default",
                  password=url.password or "", secure=url.scheme == "https")
    if database != "default":
        bootstrap = clickhouse_connect.get_client(**server)
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        bootstrap.close()
    return clickhouse_connect.get_client(**server, database=database)


def close_all() -> None:
    """Release the embedded engine so another path (or another process) can open it."""
    for client in _embedded.values():
        try:
            client.close()
        except Exception:  # closing is best effort at shutdown
            pass
    _embedded.clear()


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled `streams/store/sql/NNN_*.sql`, in order."""
    found = []
    for entry in resources.files("streams.store.sql").iterdir():
        match = re.match(r"(\d+)_(.+)\.sql$", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: `;`-separated, `--` comments removed."""
    without_comments = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [stmt.strip() for stmt in without_comments.split(";") if stmt.strip()]


def migrate(client) -> list[int]:
    """Apply migrations not yet applied; returns the versions applied now. Idempotent."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = ReplacingMergeTree ORDER BY version")
    applied = {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}
    done = []
    for version, name, sql in migration_files():
        if version in applied:
            continue
        for statement in split_statements(sql):
            client.command(statement)
        client.insert("schema_migrations", [[version, name]], column_names=["version", "name"])
        log.info("applied migration %03d_%s", version, name)
        done.append(version)
    return done


def redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    url = urlparse(dsn)
    return dsn.replace(f":{url.password}@", ":***@") if url.password else dsn


def failure_line(exc: BaseException, dsn: str) -> str | None:
    """One line for a ClickHouse failure a user meets by the book; None when it is not one."""
    from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError
    if isinstance(exc, OperationalError):
        return (f"cannot reach ClickHouse at {redact(dsn) or 'the server'}: is the server up and the URL right "
                f"(--clickhouse, env TALLY_CLICKHOUSE)?")
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, ClickHouseError):
        return f"ClickHouse refused: {first_line(exc)}"
    return None


def connect_and_migrate(dsn: str, policy, sleep=time.sleep):
    """Connect and migrate, waiting for a server that is down (with backoff, logged) rather than
    failing the worker. An embedded data directory owned by another process fails at once: waiting
    would not help, and the message says what to do."""
    waits = policy.waits()
    attempt = 0
    while True:
        attempt += 1
        try:
            client = connect(dsn)
            migrate(client)
            if attempt > 1:
                log.warning("ClickHouse at %s is reachable again after %d attempts", redact(dsn), attempt)
            return client
        except Exception as exc:
            message = first_line(exc)
            if dsn.startswith("chdb:"):
                raise StoreUnavailable(f"cannot open the embedded ClickHouse at {urlparse(dsn).path}: {message}. "
                                   f"Is another process (a running worker?) using it? Only one process can "
                                   f"own the directory: stop it, or query through its endpoint") from exc
            wait = next(waits, None)
            if wait is None:
                raise
            log.error("ClickHouse at %s is not reachable (attempt %d): %s; retrying in %.1fs",
                      redact(dsn), attempt, message, wait)
            sleep(wait)
