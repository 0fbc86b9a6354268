"""What an orchestrator asks a worker: is it alive (`/healthz/`), and should it get traffic and
stay in rotation (`/readyz/`): consuming, ClickHouse writable, Kafka answering, not stalled.

Kafka is asked every few seconds with a metadata request on the worker's own producer client; a
broker that is down or hung (SIGSTOP) stops answering, and the worker says so while it lasts."""
from __future__ import annotations

import time
from dataclasses import dataclass

KAFKA_CHECK_SECONDS = 5.0
KAFKA_TIMEOUT_SECONDS = 4.0
STALL_SECONDS = 30.0  # input waiting and no step for this long: stalled


@dataclass
class KafkaAnswers:
    ok: bool = True
    down_since: float | None = None  # monotonic time of the first unanswered check

    def answered(self, ok: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if ok:
            self.ok, self.down_since = True, None
        else:
            self.ok = False
            self.down_since = self.down_since or now


def readiness(assigned_inputs: int, lag: int, last_step: float, sink_stats, kafka: KafkaAnswers,
              now: float | None = None) -> dict:
    """The readiness answer (pure): each condition, and `ready` when all hold."""
    now = time.monotonic() if now is None else now
    clickhouse_writable = not (sink_stats.last_failure_at and sink_stats.last_failure_at > sink_stats.last_success_at)
    stalled = lag > 0 and now - last_step > STALL_SECONDS
    answer = {"consuming": assigned_inputs > 0, "clickhouse_writable": clickhouse_writable,
              "kafka_reachable": kafka.ok, "stalled": stalled,
              "kafka_down_seconds": round(now - kafka.down_since, 1) if kafka.down_since else 0.0}
    answer["ready"] = answer["consuming"] and clickhouse_writable and kafka.ok and not stalled
    return answer
