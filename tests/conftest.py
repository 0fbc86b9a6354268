"""Shared fixtures: one real Kafka broker and one embedded ClickHouse path per test session."""
from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from streams import clickhouse
from streams.broker import Broker, create_topics

TEST_BROKER_PORT = int(os.environ.get("TALLY_TEST_BROKER_PORT", "29092"))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Broker:
    """The session's Kafka broker (KRaft, single node, real jars), stopped at the end."""
    broker = Broker(home=tmp_path_factory.mktemp("kafka"), port=TEST_BROKER_PORT,
                    controller_port=TEST_BROKER_PORT + 1)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka) -> str:
    return kafka.bootstrap


@pytest.fixture
def new_topic(bootstrap):
    """Create a fresh topic with a unique name: new_topic("user-actions", partitions=4)."""
    def make(prefix: str = "t", partitions: int = 4, compacted: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topics(bootstrap, {name: partitions}, {name} if compacted else set()))
        return name
    return make


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def ch_dsn(chdb_path) -> str:
    """A DSN for a fresh, migrated database in the session's embedded ClickHouse."""
    dsn = f"chdb://{chdb_path}?database=test_{uuid.uuid4().hex[:10]}"
    clickhouse.migrate(clickhouse.connect(dsn))
    return dsn


@pytest.fixture
def ch(ch_dsn):
    """A client on a fresh, migrated database."""
    return clickhouse.connect(ch_dsn)
