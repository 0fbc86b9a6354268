"""How long the scrub stage takes per enriched row, as the pipeline calls it (`scrub_columns` over
batches): clean rows (the prefilter's fast path), rows carrying secrets, and a mix of one in 20.

    .venv/bin/python -m bench.scrub_speed [--rows 100000] [--batch 2000]

Batches are built as columns before timing; the clock covers only Scrubber.scrub_columns. The
result goes to bench/results/scrub-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import time
import uuid

from streams.stages import scrub
from streams.stages.scrub import rules as scrub_rules

APPS = ("amundsen", "code-search", "bi", "notebooks")
COMMANDS = ("search_table", "get_table_metadata", "get_popular_tables", "update_bookmark", "get_user_own",
            "dashboard.viewed", "chart.run_query_clicked", "notebook.cell_executed")
SCHEMAS = ("core", "gold", "marketing", "finance", "growth", "ops")
TABLES = ("orders", "users", "sessions", "payments", "daily_revenue", "events_raw", "ab_assignments")
SEARCH_TERMS = ("orders", "revenue by country", "dau", "churn", "payments 2024", "user sessions", "")
LOCATIONS = ("search_page", "table_detail", "home_page", "bookmark_list", "dashboard", "")
LABELS = ("orders", "View details", "Bookmark", "Run", "Next page", "")
ERRORS = ("", "", "", "", "", "", "", "", "TimeoutError: metadata service did not answer in 5s",
          "KeyError: 'column_stats'")


def clean_row(rng: random.Random) -> dict:
    app = rng.choice(APPS)
    table_key = f"hive://gold.{rng.choice(SCHEMAS)}/{rng.choice(TABLES)}"
    search_term = rng.choice(SEARCH_TERMS)
    keyword_args = {"table_key": table_key, "index": rng.randrange(20), "source": rng.choice(LOCATIONS)}
    if app == "bi":
        keyword_args = {"dashboard_id": rng.randrange(500), "chart_type": rng.choice(("bar", "line", "table")),
                        "query_id": str(uuid.UUID(int=rng.getrandbits(128))), "filters": rng.randrange(4)}
    elif search_term:
        keyword_args["query_term"] = search_term
        keyword_args["page_index"] = rng.randrange(5)
    start = 1_718_000_000_000 + rng.randrange(10**9)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "app": app,
        "command": rng.choice(COMMANDS),
        "event_name": "",
        "user": f"user{rng.randrange(5000)}",
        "start_epoch_ms": start,
        "end_epoch_ms": start + rng.randrange(2000),
        "host_name": f"web-{rng.randrange(12)}",
        "session_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "pos_args_json": "[]",
        "keyword_args_json": json.dumps(keyword_args, separators=(",", ":")),
        "output": json.dumps({"status": "ok", "results": rng.randrange(100)}, separators=(",", ":")),
        "error": rng.choice(ERRORS),
        "target_id": f"table_row_{rng.randrange(20)}",
        "target_type": "button",
        "label": rng.choice(LABELS),
        "location": rng.choice(LOCATIONS),
        "value": "",
        "properties": {"browser": rng.choice(("chrome", "firefox", "safari")), "page": rng.choice(LOCATIONS)},
        "search_term": search_term,
        "resource_key": table_key,
        "user_email": "",
        "user_title": "Data Scientist",
        "user_team": "growth",
    }


SECRETS = (
    ("keyword_args_json", lambda rng: json.dumps({"table_key": "hive://gold.core/orders", "password": f"pw{rng.randrange(10**6)}"})),
    ("keyword_args_json", lambda rng: json.dumps({"dsn": f"postgres://etl:s3cret{rng.randrange(10**6)}@db.internal:5432/dw"})),
    ("error", lambda rng: f"401 Unauthorized: Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1{rng.randrange(10**6)}fQ.c2lnbmF0dXJl"),
    ("error", lambda rng: f"query failed: SELECT id, email FROM finance.payments WHERE amount > {rng.randrange(1000)}"),
    ("output", lambda rng: json.dumps({"card": "4111 1111 1111 1111", "ok": False})),
    ("label", lambda rng: f"shared by alice{rng.randrange(1000)}@example.com"),
    ("value", lambda rng: f"ghp_{''.join(rng.choice('abcdefghijklmnopqrstuvwxyz0123456789') for _ in range(36))}"),
    ("error", lambda rng: f"connect to 10.{rng.randrange(255)}.3.4 refused"),
)


def secret_row(rng: random.Random) -> dict:
    row = clean_row(rng)
    field, make = rng.choice(SECRETS)
    row[field] = make(rng)
    return row


def as_columns(rows: list[dict]) -> dict[str, list]:
    names = list(rows[0]) + ["scrubbed_fields"]
    return {name: [dict(row[name]) if name == "properties" else row.get(name, []) if name == "scrubbed_fields"
                   else row[name] for row in rows] for name in names}


def time_rows(scrubber: scrub.Scrubber, rows: list[dict], batch: int) -> float:
    """Microseconds per row for scrub_columns over batches of rows (built before the clock starts)."""
    batches = [as_columns([dict(row, scrubbed_fields=[]) for row in rows[i:i + batch]])
               for i in range(0, len(rows), batch)]
    started = time.perf_counter()
    for columns in batches:
        scrubber.scrub_columns(columns)
    return (time.perf_counter() - started) / len(rows) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    scrubber = scrub.Scrubber(scrub.load_policy(hmac_key="bench-key"))
    clean = [clean_row(rng) for _ in range(args.rows)]
    secret = [secret_row(rng) for _ in range(args.rows)]
    mixed = [secret_row(rng) if i % 20 == 0 else clean_row(rng) for i in range(args.rows)]
    time_rows(scrubber, clean[:4000], args.batch)  # warm caches (pseudonyms, key decisions)
    result = {"prefilter": "re2" if scrub_rules._re2 is not None else "re", "rows": args.rows, "batch": args.batch,
              "us_per_row": {name: round(time_rows(scrubber, rows, args.batch), 2)
                             for name, rows in (("clean", clean), ("secret", secret), ("one_in_20", mixed))}}
    for name, micros in result["us_per_row"].items():
        print(f"{name:>10} rows: {micros:6.2f} us/row  ({args.rows} rows, batches of {args.batch})")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("scrub-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"result: {path}")


if __name__ == "__main__":
    main()
