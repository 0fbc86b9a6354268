"""Readiness, pure: each condition an orchestrator's probe needs, and ready only when all hold."""
from __future__ import annotations

from streams.runtime.health import STALL_SECONDS, KafkaAnswers, readiness
from streams.store.sink import SinkStats

NOW = 1000.0


def test_ready_when_consuming_writable_answered_and_moving():
    answer = readiness(4, 0, NOW - 1, SinkStats(last_success_at=NOW - 2), KafkaAnswers(), now=NOW)
    assert answer == {"consuming": True, "clickhouse_writable": True, "kafka_reachable": True, "stalled": False,
                      "kafka_down_seconds": 0.0, "ready": True}


def test_each_condition_alone_makes_it_not_ready():
    fine = dict(assigned_inputs=4, lag=0, last_step=NOW - 1, sink_stats=SinkStats(), kafka=KafkaAnswers())
    down = KafkaAnswers()
    down.answered(False, now=NOW - 12)
    down.answered(False, now=NOW - 7)
    cases = {"consuming": dict(assigned_inputs=0),
             "clickhouse_writable": dict(sink_stats=SinkStats(last_failure_at=NOW - 1, last_success_at=NOW - 5)),
             "kafka_reachable": dict(kafka=down),
             "stalled": dict(lag=50, last_step=NOW - STALL_SECONDS - 1)}
    for condition, change in cases.items():
        answer = readiness(**{**fine, **change}, now=NOW)
        assert answer["ready"] is False and answer[condition] is (condition == "stalled"), condition
    assert readiness(**{**fine, "kafka": down}, now=NOW)["kafka_down_seconds"] == 12.0


def test_kafka_answering_again_clears_the_outage():
    answers = KafkaAnswers()
    answers.answered(False, now=1.0)
    answers.answered(True, now=2.0)
    assert (answers.ok, answers.down_since) == (True, None)
