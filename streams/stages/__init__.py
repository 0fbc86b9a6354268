"""The stages: pure functions from decoded events to rows, dead letters and active-user counts.

No Kafka, no ClickHouse, no Faust: `flow.process_batch` runs one partition's batch through
validate -> enrich -> scrub -> profile join -> active users; `outcome` says what became of each
event. The runtime feeds them; tests and the bench run them on plain lists.
"""
