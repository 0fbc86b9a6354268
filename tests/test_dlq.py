"""Dead-letter tools: pure grouping/formatting/selection, then inspect and replay on the real broker."""
from __future__ import annotations

import asyncio

import pytest

from conftest import read_topic
from streams.cli import main
from streams.contract import DeadLetter, UserAction
from streams.ops.dlq import (REPLAY_HEADER, SCRUBBED_HEADER, UNREADABLE, DeadLetterRecord, Inspection, ReplayTally,
                         decode_record, format_inspection, format_record, format_replay, replay_message,
                         SinceOffsets, select_for_replay)

T0 = 1_709_546_400_000  # 2024-03-04T10:00:00Z


def action(event_id: str, user: str, schema_version: int = 2) -> bytes:
    return UserAction(event_id=event_id, user=user, app="amundsen", command="search",
                      start_epoch_ms=T0, end_epoch_ms=T0 + 5, schema_version=schema_version).SerializeToString()


def letter(reason: str, n: int, payload: bytes = b"", **fields) -> DeadLetter:
    return DeadLetter(reason=reason, detail=f"detail {n}", source_topic="user-actions", source_partition=n % 4,
                      source_offset=100 + n, received_epoch_ms=T0 + n * 1000, scrubbed_payload=payload,
                      event_id=f"e{n}", app="amundsen", user=f"user-{n}", **fields)


def record(offset: int, dead_letter: DeadLetter | None, partition: int = 0) -> DeadLetterRecord:
    return DeadLetterRecord(partition, offset, dead_letter)


# ---------------------------------------------------------------- pure parts

def test_decode_record_marks_unreadable_messages():
    good = decode_record(1, 7, letter("too_late", 1).SerializeToString())
    assert (good.partition, good.offset, good.reason) == (1, 7, "too_late")
    assert decode_record(0, 8, b"\xff\xff\xff").reason == UNREADABLE
    assert decode_record(0, 9, None).reason == UNREADABLE


def test_inspection_counts_by_reason_most_frequent_first():
    inspection = Inspection(limit=2)
    inspection.add([record(0, letter("undecodable", 0)), record(1, letter("too_late", 1)),
                    record(2, letter("too_late", 2)), record(3, None)])
    inspection.add([record(4, letter("too_late", 4))])
    assert inspection.by_reason() == [("too_late", 3), (UNREADABLE, 1), ("undecodable", 1)]
    assert inspection.total == 5
    assert [r.offset for r in inspection.most_recent()] == [4, 2]


def test_inspection_of_one_reason():
    inspection = Inspection(reason="undecodable", limit=10)
    inspection.add([record(n, letter("undecodable" if n % 2 else "too_late", n)) for n in range(6)])
    assert inspection.by_reason() == [("undecodable", 3)]
    assert [r.offset for r in inspection.most_recent()] == [5, 3, 1]


def test_inspection_with_limit_zero_still_counts():
    inspection = Inspection(limit=0)
    inspection.add([record(n, letter("too_late", n)) for n in range(3)])
    assert inspection.total == 3 and inspection.most_recent() == []


def test_format_record_shows_time_reason_source_app_and_event():
    line = format_record(record(0, letter("future_timestamp", 3)))
    assert line.startswith("2024-03-04T10:00:03Z  future_timestamp  user-actions[3]@103  app=amundsen  event_id=e3")
    assert line.endswith("detail 3")
    assert UNREADABLE in format_record(record(5, None, partition=2))


def test_format_inspection():
    inspection = Inspection(limit=1)
    inspection.add([record(0, letter("too_late", 0)), record(1, letter("too_late", 1)),
                    record(2, letter("undecodable", 2))])
    text = format_inspection(inspection, "user-actions-dlq")
    assert text.splitlines()[0] == "3 dead letters in user-actions-dlq"
    assert text.splitlines()[2:5] == ["by reason:", "  too_late            2", "  undecodable         1"]
    assert "most recent 1:" in text and "event_id=e2" in text
    assert format_inspection(Inspection(), "dlq") == "0 dead letters in dlq"


def test_select_for_replay_takes_the_reason_with_payloads_from_the_offset():
    records = [record(0, letter("unsupported_schema_version", 0, action("e0", "a"))),
               record(1, letter("unsupported_schema_version", 1)),               # no payload: unparseable
               record(2, letter("too_late", 2, action("e2", "b"))),
               record(3, letter("unsupported_schema_version", 3, action("e3", "c"))),
               record(4, None)]
    assert [r.offset for r in select_for_replay(records, "unsupported_schema_version")] == [0, 3]
    assert [r.offset for r in select_for_replay(records, "unsupported_schema_version", SinceOffsets.parse("1"))] == [3]
    assert [r.offset for r in select_for_replay(records, "unsupported_schema_version", SinceOffsets.parse("0:3"))] == [3]
    assert [r.offset for r in select_for_replay(records, "unsupported_schema_version", SinceOffsets.parse("1:3"))] == [0, 3]
    assert select_for_replay(records, "missing_field") == []


def test_replay_message_is_keyed_by_user_and_says_where_it_came_from():
    message = replay_message(record(12, letter("too_late", 1, b"payload"), partition=3), "dlq")
    assert message.key == b"user-1" and message.value == b"payload"
    assert dict(message.headers) == {REPLAY_HEADER: b"dlq/3/12", SCRUBBED_HEADER: b"1"}
    assert replay_message(record(0, DeadLetter(reason="x", scrubbed_payload=b"p")), "dlq").key is None


def test_replay_tally_and_its_report():
    records = [record(0, letter("r", 0, b"p")), record(1, letter("r", 1)), record(5, letter("other", 5, b"p"))]
    tally = ReplayTally(reason="r")
    tally.add(records, select_for_replay(records, "r"))
    tally.read_partitions([0, 1], SinceOffsets())
    assert (tally.replayed, tally.without_payload, str(tally.next_since)) == (1, 1, "0:2,1:0")
    text = format_replay(tally, "dlq", "user-actions", dry_run=True)
    assert text.splitlines()[0] == "would replay 1 dead letters with reason 'r' from dlq to user-actions"
    assert "skipped 1 without a payload" in text and "--since-offset 0:2,1:0" in text


def test_since_offsets_are_kept_per_partition():
    """A longer DLQ partition's offset must not skip the letters of a shorter one."""
    records = [record(offset, letter("r", offset, b"p"), partition=0) for offset in range(10)]
    records.append(record(0, letter("r", 10, b"p"), partition=1))
    tally = ReplayTally(reason="r")
    tally.add(records, select_for_replay(records, "r"))
    since = SinceOffsets.parse(str(tally.next_since))
    later = [record(10, letter("r", 11, b"p"), partition=0), record(1, letter("r", 12, b"p"), partition=1)]
    assert [(r.partition, r.offset) for r in select_for_replay(records + later, "r", since)] == [(0, 10), (1, 1)]
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        SinceOffsets.parse("0:x")


# ---------------------------------------------------------------- real broker

async def _publish(bootstrap: str, topic: str, letters: list[DeadLetter]) -> None:
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for dead_letter in letters:
            await producer.send_and_wait(topic, dead_letter.SerializeToString(), key=dead_letter.reason.encode())
    finally:
        await producer.stop()


@pytest.mark.kafka
def test_inspect_and_replay_on_the_broker(bootstrap, new_topic, capsys):
    dlq_topic, input_topic = new_topic("dlq", partitions=2), new_topic("user-actions", partitions=2)
    schema_v2 = [letter("unsupported_schema_version", n, action(f"e{n}", f"user-{n}")) for n in range(3)]
    letters = schema_v2 + [letter("undecodable", 3), letter("undecodable", 4),
                           letter("unsupported_schema_version", 5)]  # this one has no payload
    asyncio.run(_publish(bootstrap, dlq_topic, letters))

    assert main(["dlq", "inspect", "--bootstrap", bootstrap, "--dlq-topic", dlq_topic, "--limit", "2"]) == 0
    output = capsys.readouterr().out
    assert f"6 dead letters in {dlq_topic}" in output
    counts = [line.split() for line in output.split("by reason:")[1].split("most recent")[0].splitlines()]
    assert [count for count in counts if count] == [["unsupported_schema_version", "4"], ["undecodable", "2"]]
    assert "most recent 2:" in output and "event_id=e5" in output and "event_id=e4" in output

    assert main(["dlq", "inspect", "--bootstrap", bootstrap, "--dlq-topic", dlq_topic,
                 "--reason", "undecodable"]) == 0
    assert f"2 dead letters with reason 'undecodable' in {dlq_topic}" in capsys.readouterr().out

    replay_args = ["dlq", "replay", "--reason", "unsupported_schema_version", "--bootstrap", bootstrap,
                   "--dlq-topic", dlq_topic, "--topic", input_topic]
    assert main(replay_args + ["--dry-run"]) == 0
    assert "would replay 3 dead letters" in capsys.readouterr().out

    assert main(replay_args) == 0
    output = capsys.readouterr().out
    assert "replayed 3 dead letters" in output and "skipped 1 without a payload" in output
    since_offset = output.split("--since-offset ")[1].split()[0]
    assert since_offset.count(":") == 2  # one offset per DLQ partition

    arrived = asyncio.run(read_topic(bootstrap, input_topic))
    assert sorted(m.value for m in arrived) == sorted(l.scrubbed_payload for l in schema_v2)
    assert sorted(m.key for m in arrived) == [b"user-0", b"user-1", b"user-2"]
    assert all(dict(m.headers)[SCRUBBED_HEADER] == b"1" for m in arrived)
    assert {UserAction.FromString(m.value).schema_version for m in arrived} == {2}

    assert main(replay_args + ["--since-offset", since_offset]) == 0
    assert "replayed 0 dead letters" in capsys.readouterr().out


@pytest.mark.kafka
def test_inspect_of_a_missing_topic_says_zero(bootstrap, capsys):
    assert main(["dlq", "inspect", "--bootstrap", bootstrap, "--dlq-topic", "no-such-dlq-topic-x1"]) == 0
    assert capsys.readouterr().out.strip() == "0 dead letters in no-such-dlq-topic-x1"
