"""One typed settings object, built once from flags and the environment, passed to every stage."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Topics:
    user_actions: str = "user-actions"
    dead_letters: str = "user-actions-dlq"
    user_profiles: str = "user-profiles"
    active_users: str = "active-users"
    alerts: str = "alerts"

    @classmethod
    def with_prefix(cls, prefix: str) -> "Topics":
        """Every topic name prefixed: several pipelines (or test runs) on one cluster."""
        return cls(**{f.name: prefix + f.default for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:19092"
    data_dir: Path = Path(".tally")
    clickhouse: str = ""              # "" = embedded chDB in data_dir/clickhouse; else http(s)://host:8123/db
    app_id: str = "tally"             # Faust app id = consumer group
    topics: Topics = field(default_factory=Topics)
    partitions: int = 4               # partitions of the input topic (keyed by user)
    replication: int = 1              # replicas of the topics the worker creates (3 on a cluster)
    session_timeout_s: float = 60.0   # a worker silent this long leaves the group: a crashed one's partitions move then
    web_port: int = 6066
    web_bind: str = "127.0.0.1"       # 0.0.0.0 in a container, for probes and scrapes
    admin_sql: bool = False           # POST /query/ may change data and tables (else read-only)
    sink_batch_size: int = 20_000     # rows per ClickHouse insert, about
    sink_batch_seconds: float = 1.0   # ... or this long, whichever comes first
    take_messages: int = 100          # Kafka messages per read of the fetched input (one may be an envelope) ...
    step_bytes: int = 512 * 1024      # ... cut into steps of about this many bytes through the stages
    allowed_lateness_days: int = 3    # event time: events further behind the newest are historical (stored, recounted from the store)
    max_future_ms: int = 10 * 60_000  # events stamped further ahead of the stream are dead-lettered
    max_message_bytes: int = 256 * 1024
    scrub_policy: Path | None = None  # None = the bundled default policy
    hmac_key: str = field(default="", repr=False)  # keyed pseudonyms; from TALLY_HMAC_KEY
    metric_interval_seconds: float = 1.0  # at most one MetricUpdate per key per interval
    idle_partition_seconds: float = 30.0  # a caught-up partition quiet this long stops holding back alerts
    alert_rules: Path | None = None

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def is_embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:  # never print the HMAC key
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hmac_key"}
        return f"Settings({shown}, hmac_key={'***' if self.hmac_key else ''!r})"


def from_env(**overrides) -> Settings:
    """Settings from TALLY_* environment variables, then explicit overrides (flags)."""
    env = os.environ
    values: dict = {}
    if "TALLY_BOOTSTRAP" in env:
        values["bootstrap"] = env["TALLY_BOOTSTRAP"]
    if "TALLY_DATA_DIR" in env:
        values["data_dir"] = Path(env["TALLY_DATA_DIR"])
    if "TALLY_CLICKHOUSE" in env:
        values["clickhouse"] = env["TALLY_CLICKHOUSE"]
    if "TALLY_HMAC_KEY" in env:
        values["hmac_key"] = env["TALLY_HMAC_KEY"]
    if "TALLY_SCRUB_POLICY" in env:
        values["scrub_policy"] = Path(env["TALLY_SCRUB_POLICY"])
    if env.get("TALLY_TOPIC_PREFIX"):
        values["topics"] = Topics.with_prefix(env["TALLY_TOPIC_PREFIX"])
    if "TALLY_ALERT_RULES" in env:
        values["alert_rules"] = Path(env["TALLY_ALERT_RULES"])
    if "TALLY_WEB_PORT" in env:
        values["web_port"] = int(env["TALLY_WEB_PORT"])
    if "TALLY_WEB_BIND" in env:
        values["web_bind"] = env["TALLY_WEB_BIND"]
    if "TALLY_REPLICATION" in env:
        values["replication"] = int(env["TALLY_REPLICATION"])
    if "TALLY_SESSION_TIMEOUT" in env:
        values["session_timeout_s"] = float(env["TALLY_SESSION_TIMEOUT"])
    prefix = overrides.pop("topic_prefix", None)
    if prefix:
        values["topics"] = Topics.with_prefix(prefix)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"])
    return Settings(**values)
