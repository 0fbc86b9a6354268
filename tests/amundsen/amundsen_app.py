"""Run inside a venv holding amundsen-frontend and Tally's producer side: Amundsen's Flask app in
test mode, one decorated call, one failing call and one front-end log event; prints JSON lines."""
import json
import sys
import time

from amundsen_application import create_app
from amundsen_application.log import action_log_callback
from amundsen_application.log.action_log import action_logging

app = create_app(config_module_class="amundsen_application.config.TestConfig")
registered = [getattr(cb, "__module__", "") for cb in action_log_callback._action_log_callback__post_exec_callbacks] \
    if hasattr(action_log_callback, "_action_log_callback__post_exec_callbacks") else []


@action_logging
def _get_table_metadata(*, table_key: str, index: str, source: str) -> dict:
    return {"key": table_key, "columns": 12}


@action_logging
def _update_table_owner(*, table_key: str, owner: str) -> None:
    raise ValueError("owner service unavailable")


with app.test_request_context():
    _get_table_metadata(table_key="hive://gold.core/orders", index="2", source="search_results")
    try:
        _update_table_owner(table_key="hive://gold.core/orders", owner="ada")
    except ValueError:
        pass
started = time.monotonic()
answer = app.test_client().post("/api/log/v0/log_event", json={
    "command": "click", "target_id": "tag::payments", "target_type": "tag", "label": "payments",
    "location": "table_page", "value": "1", "position": "3"})
print(json.dumps({"log_event_status": answer.status_code, "seconds": round(time.monotonic() - started, 3)}))

from streams.producer.amundsen import tracker_from_env  # noqa: E402

tracker = tracker_from_env()
flushed = tracker.flush(timeout=float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
print(json.dumps({"flushed": flushed, "stats": tracker.stats().__dict__}))
