"""The Faust and aiokafka internals the offset guarantees rely on (streams/runtime/kafka_internals.py),
each checked by name on the real objects of the pinned versions: an upgrade that removes or reshapes
one fails here, not as a silent loss of an offset guarantee."""
from __future__ import annotations

import inspect

import aiokafka.client
import faust
import pytest
from faust.types import TP, Message

from streams.runtime import kafka_internals
from streams.runtime.routine_logs import ROUTINE


@pytest.fixture(scope="module")
def app():
    return faust.App("internals-check", broker="kafka://127.0.0.1:9", store="memory://")  # never started


@pytest.mark.parametrize("name", kafka_internals.FAUST_CONSUMER_INTERNALS)
def test_faust_consumer_has(app, name):
    assert hasattr(app.consumer, name), f"faust Consumer.{name} is gone"


def test_faust_consumer_gaps_are_interval_trees_by_partition(app):
    gaps = app.consumer._gap[TP("t", 0)]
    assert callable(getattr(gaps, "chop", None)), "faust Consumer._gap[tp] no longer has chop()"
    assert isinstance(app.consumer._read_offset, dict)
    assert list(inspect.signature(app.consumer._add_gap).parameters) == ["tp", "offset_from", "offset_to"]


@pytest.mark.parametrize("name", kafka_internals.FAUST_THREAD_INTERNALS)
def test_faust_consumer_thread_has(app, name):
    assert hasattr(app.consumer._thread, name), f"faust's aiokafka consumer thread lost {name}"


@pytest.mark.parametrize("name", kafka_internals.FAUST_PRODUCER_INTERNALS)
def test_faust_producer_has(app, name):
    assert hasattr(app.producer, name), f"faust Producer.{name} is gone"


@pytest.mark.parametrize("name", kafka_internals.FAUST_TABLE_INTERNALS)
def test_faust_table_has(app, name):
    assert hasattr(app.Table(f"t-{name}", key_type=str), name), f"faust Table.{name} is gone"


def test_send_changelog_takes_an_explicit_partition(app):
    params = list(inspect.signature(app.Table("t-sig", key_type=str).send_changelog).parameters)
    assert params[:3] == ["partition", "key", "value"]


def test_a_message_can_be_marked_acked():
    assert "acked" in Message.__slots__


@pytest.mark.parametrize("name", ["add_topic", "force_metadata_update"])
def test_aiokafka_client_has(name):
    assert callable(getattr(aiokafka.client.AIOKafkaClient, name, None)), f"AIOKafkaClient.{name} is gone"


@pytest.mark.parametrize("logger_name, start", ROUTINE)
def test_each_routine_message_is_still_said_by_its_library(logger_name, start):
    """The worker says these at INFO (streams/runtime/routine_logs.py); if a library rewords one,
    this fails by its name and the message would come back at WARNING/ERROR."""
    import importlib
    module = importlib.import_module(logger_name)
    assert start in inspect.getsource(module), f"{logger_name} no longer logs {start!r}"


def test_the_worker_creates_its_changelogs_as_faust_names_them(app):
    """The worker creates its tables' changelog topics before Faust starts (`internal_topics`): the
    names and partition counts must be the ones Faust then writes to."""
    from streams.config import Settings
    from streams.runtime.app import TABLES, internal_topics
    counts, changelogs = internal_topics(Settings(app_id=app.conf.id, partitions=6))
    for name, partitions in TABLES.items():
        table = app.Table(name, key_type=str, partitions=partitions or 6)
        assert counts[table.changelog_topic.get_topic_name()] == table.partitions
        assert table.changelog_topic.get_topic_name() in changelogs


@pytest.mark.parametrize("name", kafka_internals.FAUST_APP_INTERNALS)
def test_faust_app_has(name):
    assert callable(getattr(faust.App, name, None)), f"faust App.{name} is gone"


def test_the_self_read_topic_is_kept_from_faust_fetch_loop():
    """Faust's fetch loop calls `_getmany(active_partitions, timeout)`; the self-reading app's
    consumer asks it for every active partition but the self-read topic's, and waits its timeout
    instead of asking for none (which aiokafka takes for every partition)."""
    import asyncio

    app = kafka_internals.SelfReadingApp("self-read-check", broker="kafka://127.0.0.1:9", store="memory://")
    app.self_read_topics = frozenset({"input"})
    asked = []

    async def fetch(active_partitions, timeout):
        asked.append(active_partitions)
        return {}

    consumer = app.consumer
    assert list(inspect.signature(type(consumer)._getmany).parameters) == ["self", "active_partitions", "timeout"]
    consumer._thread.getmany = fetch  # what faust's aiokafka Consumer._getmany calls
    asyncio.run(consumer._getmany({TP("input", 0), TP("other", 0)}, 0.01))
    asyncio.run(consumer._getmany({TP("input", 1)}, 0.01))
    assert asked == [{TP("other", 0)}]


def test_aiokafka_getmany_takes_partitions_timeout_and_max_records():
    from aiokafka import AIOKafkaConsumer
    params = inspect.signature(AIOKafkaConsumer.getmany).parameters
    assert {"partitions", "timeout_ms", "max_records"} <= set(params)


def test_the_app_says_when_it_is_rebalancing(app):
    """The self-read agent reads nothing from a rebalance's start until Faust has sought the
    partitions to their committed offsets (`readable_partitions`)."""
    assert app.rebalancing is False
    app.on_rebalance_start()
    assert app.rebalancing is True
    app.on_rebalance_end()
    assert app.rebalancing is False
