"""The store: ClickHouse connections (embedded chDB or a server), migrations (`sql/`), and the
batched, idempotent sink. With the analyst's query layer, the only code that imports clickhouse-connect."""
