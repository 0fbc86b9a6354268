"""Amundsen's action log into Tally, by installing Tally: no code change in Amundsen.

Tally's package registers `post_exec` under the entry-point group `action_log.post_exec.plugin`,
which `amundsen_application.log.action_log_callback` loads when it is imported. Amundsen then
calls it after every `@action_logging` call, its front-end log endpoint (`/api/log/v0/log_event`)
included, with an `ActionLogParams`. Configured from the environment:

    TALLY_BOOTSTRAP      Kafka (required; without it the callback does nothing)
    TALLY_APP            the app name (default "amundsen")
    TALLY_TOPIC_PREFIX   as the worker's, if it uses one
    TALLY_HMAC_KEY       the deployment's pseudonym key (else secrets are scrubbed at the source
                         and pseudonyms are left to the worker)

It never raises and never blocks a request: the event goes to the fail-safe tracker's buffer.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any

from streams.producer.arguments import error_text, to_json, truncate_utf8

DEFAULT_APP = "amundsen"
MAX_TEXT_BYTES = 4096
FRONTEND_FIELDS = ("target_id", "target_type", "label", "location", "value")  # the log endpoint's keyword args

_tracker = None
_lock = threading.Lock()


def action_fields(params: Any) -> dict:
    """An `ActionLogParams` as the contract's fields (pure). The front-end endpoint's keyword
    arguments become the contract's front-end fields; its `position` a property."""
    start = int(getattr(params, "start_epoch_ms", 0) or 0)
    fields = {"command": str(params.command), "start_epoch_ms": start,
              "end_epoch_ms": int(getattr(params, "end_epoch_ms", None) or start),
              "user": str(getattr(params, "user", "") or ""),
              "host_name": str(getattr(params, "host_name", "") or ""),
              "pos_args_json": str(getattr(params, "pos_args_json", "") or "[]"),
              "keyword_args_json": str(getattr(params, "keyword_args_json", "") or "{}")}
    output = getattr(params, "output", None)
    if output is not None and output != "null":  # Amundsen's json.dumps of a call that returned None
        fields["output"] = truncate_utf8(output if isinstance(output, str) else to_json(output), MAX_TEXT_BYTES)
    error = getattr(params, "error", None)
    if error is not None:
        fields["error"] = (error_text(error, MAX_TEXT_BYTES) if isinstance(error, BaseException)
                           else truncate_utf8(str(error), MAX_TEXT_BYTES))
    try:
        keywords = json.loads(fields["keyword_args_json"])
    except ValueError:
        keywords = None
    if isinstance(keywords, dict):
        for name in FRONTEND_FIELDS:
            if keywords.get(name) not in (None, ""):
                fields[name] = keywords[name] if isinstance(keywords[name], str) else to_json(keywords[name])
        if keywords.get("position") not in (None, ""):
            fields["properties"] = {"position": str(keywords["position"])}
    return fields


def tracker_from_env(environ=os.environ):
    """The process's tracker, made on first use from TALLY_* variables; None without TALLY_BOOTSTRAP."""
    global _tracker
    if _tracker is None:
        with _lock:
            if _tracker is None:
                bootstrap = environ.get("TALLY_BOOTSTRAP")
                if not bootstrap:
                    return None
                from streams.config import Topics
                from streams.producer.tracker import Tracker
                topic = Topics.with_prefix(environ.get("TALLY_TOPIC_PREFIX", "")).user_actions
                _tracker = Tracker(bootstrap, environ.get("TALLY_APP", DEFAULT_APP), topic)
    return _tracker


def post_exec(params: Any) -> None:
    """Amundsen's post-execution action-log callback."""
    try:
        tracker = tracker_from_env()
        if tracker is not None:
            tracker.record(action_fields(params))
    except Exception:  # the host app's request must never see the analytics fail
        pass
