"""ClickHouse connection and versioned migrations, the same for embedded chDB and a server.

`chdb:///path` opens the embedded engine in this process (one process may own a data
directory at a time); `http(s)://host:8123/db` talks to a server.
"""
from __future__ import annotations

import logging
import re
from importlib import resources
import os
from urllib.parse import parse_qs, urlparse

import clickhouse_connect

log = logging.getLogger(__name__)

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
    """(version, name, sql) for every bundled `streams/sql/NNN_*.sql`, in order."""
    found = []
    for entry in resources.files("streams.sql").iterdir():
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
