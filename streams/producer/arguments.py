"""Pure helpers on the caller's path: arguments to bounded JSON, secrets out by name."""
from __future__ import annotations

import inspect
import json
import re
from typing import Any, Callable, Literal


DEFAULT_TOPIC = "user-actions"
REDACTED = "[redacted]"
# Names of keyword arguments and properties whose values never leave the process.
SECRET_NAME = re.compile(
    r"passw|passphrase|secret|token(?!s)|api[_-]?key|authoriz|credential|cookie|private[_-]?key|^auth$|_auth$"
    r"|^conn(ection)?$|dsn|conn(ection)?_str|database_url",
    re.IGNORECASE)
AUTO = "auto"  # scrubber=AUTO: use streams.stages.scrub's default policy when that module is importable
DropPolicy = Literal["oldest", "newest"]


def is_secret_name(name: object) -> bool:
    return isinstance(name, str) and SECRET_NAME.search(name) is not None


def redact_secrets(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with the values of secret-named keys replaced, at any depth of dicts and lists."""
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_name(k) else redact_secrets(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v, depth + 1) for v in value]
    return value


def _short_str(value: object, limit: int = 1024) -> str:
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON types only: non-string keys and unknown objects become strings, cycles are cut."""
    if depth > 16:
        return "..."
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {k if isinstance(k, str) else _short_str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    return _short_str(value)


# Built once: json.dumps with options builds a new encoder per call, a few µs on the hot path.
_ENCODER = json.JSONEncoder(default=_short_str, ensure_ascii=False, separators=(",", ":"))
_PLAIN_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def to_json(value: Any) -> str:
    """JSON text of `value`; what isn't JSON-serialisable is stringified. Never raises."""
    try:
        return _ENCODER.encode(value)
    except Exception:  # non-string keys, cycles, a __str__ that raises
        try:
            return _PLAIN_ENCODER.encode(_jsonable(value))
        except Exception:
            return json.dumps(_short_str(value))


def truncate_utf8(text: str, max_bytes: int) -> str:
    """At most `max_bytes` of UTF-8, cut on a character boundary."""
    if len(text) * 4 <= max_bytes:  # fast path: can't be too long
        return text
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, always half a pair: a whole pair is one code point


def valid_text(value: Any) -> Any:
    """`value` with every half of a surrogate pair in its strings replaced by U+FFFD: a Protobuf
    string must be UTF-8, and such a str has no UTF-8 form."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    return value


def bounded_json(value: Any, max_bytes: int) -> str:
    """JSON of `value`, replaced by a JSON note when longer than `max_bytes` (cut JSON would not parse)."""
    text = to_json(value)
    if len(text) * 4 <= max_bytes or len(text.encode("utf-8", "replace")) <= max_bytes:
        return text
    return json.dumps({"_truncated_bytes": len(text.encode("utf-8", "replace"))})


def error_text(exc: BaseException, max_bytes: int) -> str:
    return truncate_utf8(f"{type(exc).__name__}: {_short_str(exc, max_bytes)}", max_bytes)


def property_values(properties: dict[str, Any]) -> dict[str, str]:
    """Properties as the map<string,string> of the contract; secret-named ones redacted."""
    return {str(k): REDACTED if is_secret_name(k) else (v if isinstance(v, str) else to_json(v))
            for k, v in properties.items()}


def secret_positions(func: Callable) -> frozenset[int]:
    """Positions of parameters named like secrets, so `login(user, password)` called positionally is redacted too."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(i for i, p in enumerate(params)
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and is_secret_name(p.name))


def redact_args(args: tuple, positions: frozenset[int]) -> list:
    return [REDACTED if i in positions else redact_secrets(a, 1) for i, a in enumerate(args)]
