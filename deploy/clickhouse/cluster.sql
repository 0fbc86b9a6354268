-- Tally on a replicated, sharded ClickHouse cluster (cluster name `tally`, macros {shard} and
-- {replica} set on every node). Apply once with clickhouse-client --multiquery, then run
-- `tally migrate` against any node for the views (streams/store/sql/002_kpi_views.sql): they read
-- `user_actions`, which here is the Distributed table over the per-shard replicated tables.
--
-- Sharding by user keeps every event of a user on one shard, so FINAL (event_id dedup) and
-- distinct-user counts are exact per shard and add up across shards. Replicated tables
-- deduplicate retried inserts by block (and by the sink's insert_deduplication_token) by default.

CREATE DATABASE IF NOT EXISTS tally ON CLUSTER tally;

CREATE TABLE IF NOT EXISTS tally.user_actions_local ON CLUSTER tally
(
    event_id          String,
    app               LowCardinality(String),
    command           LowCardinality(String),
    event_name        LowCardinality(String),
    user              String,
    ts                DateTime64(3, 'UTC'),
    ds                Date,
    is_weekend        UInt8,
    start_epoch_ms    Int64,
    end_epoch_ms      Int64,
    duration_ms       Int64,
    host_name         LowCardinality(String),
    session_id        String,
    pos_args_json     String,
    keyword_args_json String,
    output            String,
    error             String,
    has_error         UInt8,
    target_id         String,
    target_type       LowCardinality(String),
    label             String,
    location          String,
    value             String,
    properties        Map(String, String),
    search_term       String,
    result_index      Nullable(Int32),
    source            LowCardinality(String),
    resource_key      String,
    user_email        String,
    user_title        LowCardinality(String),
    user_team         LowCardinality(String),
    ab_flags          Map(String, String),
    scrubbed_fields   Array(String),
    kafka_partition   UInt16,
    kafka_offset      UInt64,
    ingested_at       DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tally/user_actions', '{replica}')
PARTITION BY toYYYYMM(ds)
ORDER BY (app, ds, command, user, event_id);

CREATE TABLE IF NOT EXISTS tally.user_actions ON CLUSTER tally AS tally.user_actions_local
ENGINE = Distributed(tally, tally, user_actions_local, cityHash64(user));

CREATE TABLE IF NOT EXISTS tally.dead_letters_local ON CLUSTER tally
(
    reason            LowCardinality(String),
    detail            String,
    source_topic      LowCardinality(String),
    source_partition  Int32,
    source_offset     Int64,
    received_at       DateTime64(3, 'UTC'),
    payload_size      Int64,
    payload_sha256    String,
    scrubbed_payload  String,
    event_id          String,
    app               LowCardinality(String),
    user              String,
    scrubbed_fields   Array(String),
    letter            UInt32
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tally/dead_letters', '{replica}')
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, source_partition, source_offset, letter);

CREATE TABLE IF NOT EXISTS tally.dead_letters ON CLUSTER tally AS tally.dead_letters_local
ENGINE = Distributed(tally, tally, dead_letters_local, source_partition);

-- Profiles are small: one replicated copy on every node (no sharding), so joins stay local.
CREATE TABLE IF NOT EXISTS tally.user_profiles ON CLUSTER tally
(
    user        String,
    email       String,
    title       LowCardinality(String),
    team        LowCardinality(String),
    ab_flags    Map(String, String),
    updated_at  DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/tally/user_profiles', '{replica}', updated_at)
ORDER BY user;

-- The deployment's facts (the pseudonym key's fingerprint): one replicated copy on every node.
CREATE TABLE IF NOT EXISTS tally.tally_meta ON CLUSTER tally
(
    name        String,
    value       String,
    updated_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/tally/tally_meta', '{replica}', updated_at)
ORDER BY name;

-- Mark the base migration as applied so `tally migrate` only adds the views.
CREATE TABLE IF NOT EXISTS tally.schema_migrations ON CLUSTER tally
(version UInt32, name String, applied_at DateTime DEFAULT now())
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/tally/schema_migrations', '{replica}')
ORDER BY version;
INSERT INTO tally.schema_migrations (version, name) VALUES (1, 'tables'), (3, 'meta'), (4, 'dead_letter_entries');
