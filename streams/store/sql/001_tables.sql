-- One row per enriched, scrubbed event. ReplacingMergeTree keyed by event_id (inside the
-- usual filter columns) so a redelivered event collapses to one row; read with FINAL, or
-- count(DISTINCT event_id), when an exact row count matters before merges have run.
CREATE TABLE IF NOT EXISTS user_actions
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ds)
ORDER BY (app, ds, command, user, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Everything the pipeline refused, with the reason and a scrubbed copy of the payload.
CREATE TABLE IF NOT EXISTS dead_letters
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
    scrubbed_fields   Array(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, source_partition, source_offset)
SETTINGS non_replicated_deduplication_window = 1000;

-- Latest profile per user (title/role, team, A/B flags), from the compacted user-profiles topic.
CREATE TABLE IF NOT EXISTS user_profiles
(
    user        String,
    email       String,
    title       LowCardinality(String),
    team        LowCardinality(String),
    ab_flags    Map(String, String),
    updated_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY user;
