"""Scrub policy: the YAML file a user edits (key rules, detectors, per-app overrides), parsed and
checked with clear errors."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streams.stages.scrub.detectors import (ACTIONS, DEFAULT_KEEP_CHARS, DEFAULT_POLICY_PATH, DETECTOR_NAMES,
                                            DEVELOPMENT_HMAC_KEY, ROW_TEXT_FIELDS, _DETECTOR_BY_NAME)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Action:
    kind: str                      # one of ACTIONS
    keep_chars: int = DEFAULT_KEEP_CHARS


@dataclass(frozen=True)
class KeyRule:
    name: str
    action: Action
    keys: tuple[str, ...]


@dataclass(frozen=True)
class AppOverride:
    keep_keys: tuple[str, ...] = ()
    extra_drop_keys: tuple[str, ...] = ()
    extra_hash_keys: tuple[str, ...] = ()
    detectors: dict[str, Action] = field(default_factory=dict)
    max_chars: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ScrubPolicy:
    key_rules: tuple[KeyRule, ...]
    keep_keys: tuple[str, ...]
    detectors: dict[str, Action]   # every detector name -> its action
    max_chars: dict[str, int]
    pseudonymize_users: bool
    apps: dict[str, AppOverride]
    hmac_key: bytes = field(repr=False)
    source: str = ""

    def __repr__(self) -> str:  # never print the HMAC key
        return (f"ScrubPolicy(source={self.source!r}, rules={[r.name for r in self.key_rules]}, "
                f"apps={sorted(self.apps)}, pseudonymize_users={self.pseudonymize_users})")


_TOP_LEVEL_KEYS = {"version", "pseudonymize_users", "key_rules", "keep_keys", "detectors", "max_chars", "apps"}
_APP_KEYS = {"keep_keys", "extra_drop_keys", "extra_hash_keys", "detectors", "max_chars"}
_KEY_PATTERN_CHARS = re.compile(r"[a-z0-9*_. -]+")


def load_policy(path: str | Path | None = None, hmac_key: str = "") -> ScrubPolicy:
    """Read and validate a scrub policy file (None: the bundled default).

    Raises ValueError naming the bad entry. An empty hmac_key falls back to a fixed development
    key with a warning: pseudonyms are then reversible by anyone who can guess user ids.
    """
    policy_path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        document = yaml.safe_load(policy_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"scrub policy {policy_path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"scrub policy {policy_path}: not valid YAML: {exc}") from None
    if not hmac_key:
        log.warning("no HMAC key (TALLY_HMAC_KEY): pseudonyms use the fixed development key and can be "
                    "reversed by anyone who can guess user ids; set TALLY_HMAC_KEY in production")
        hmac_key = DEVELOPMENT_HMAC_KEY
    try:
        return _parse_policy(document, hmac_key.encode("utf-8"), str(policy_path))
    except _PolicyError as exc:
        raise ValueError(f"scrub policy {policy_path}: {exc}") from None


class _PolicyError(Exception):
    pass


def _parse_policy(document: Any, hmac_key: bytes, source: str) -> ScrubPolicy:
    if not isinstance(document, dict):
        raise _PolicyError("the file must be a mapping of settings")
    _reject_unknown(document, _TOP_LEVEL_KEYS, "")
    if document.get("version", 1) != 1:
        raise _PolicyError(f"version: {document.get('version')!r} is not supported (only 1)")
    pseudonymize_users = document.get("pseudonymize_users", False)
    if not isinstance(pseudonymize_users, bool):
        raise _PolicyError(f"pseudonymize_users: {pseudonymize_users!r} is not true or false")

    rules_doc = document.get("key_rules") or {}
    if not isinstance(rules_doc, dict):
        raise _PolicyError("key_rules: must map a rule name to {action, keys}")
    key_rules = []
    for name, rule_doc in rules_doc.items():
        where = f"key_rules.{name}"
        _check_rule_name(name, where)
        if not isinstance(rule_doc, dict):
            raise _PolicyError(f"{where}: must be a mapping with action and keys")
        _reject_unknown(rule_doc, {"action", "keys", "keep_chars"}, where)
        action = _parse_action(rule_doc, where)
        if action.kind == "keep":
            raise _PolicyError(f"{where}.action: keep is for keep_keys, not a rule")
        key_rules.append(KeyRule(name, action, _parse_key_patterns(rule_doc.get("keys"), f"{where}.keys")))

    detectors = {name: Action(_DETECTOR_BY_NAME[name].default_action) if name in _DETECTOR_BY_NAME
                 else Action("mask") for name in DETECTOR_NAMES}
    detectors.update(_parse_detector_actions(document.get("detectors"), "detectors"))

    apps_doc = document.get("apps") or {}
    if not isinstance(apps_doc, dict):
        raise _PolicyError("apps: must map an app name to its overrides")
    apps = {}
    for app, app_doc in apps_doc.items():
        where = f"apps.{app}"
        if not isinstance(app_doc, dict):
            raise _PolicyError(f"{where}: must be a mapping of overrides")
        if "pseudonymize_users" in app_doc:
            raise _PolicyError(f"{where}.pseudonymize_users: not allowed per app; a user must get the same "
                               "pseudonym in every app")
        _reject_unknown(app_doc, _APP_KEYS, where)
        apps[str(app)] = AppOverride(
            keep_keys=_parse_key_patterns(app_doc.get("keep_keys", []), f"{where}.keep_keys"),
            extra_drop_keys=_parse_key_patterns(app_doc.get("extra_drop_keys", []), f"{where}.extra_drop_keys"),
            extra_hash_keys=_parse_key_patterns(app_doc.get("extra_hash_keys", []), f"{where}.extra_hash_keys"),
            detectors=_parse_detector_actions(app_doc.get("detectors"), f"{where}.detectors"),
            max_chars=_parse_max_chars(app_doc.get("max_chars"), f"{where}.max_chars"))

    return ScrubPolicy(
        key_rules=tuple(key_rules),
        keep_keys=_parse_key_patterns(document.get("keep_keys", []), "keep_keys"),
        detectors=detectors,
        max_chars=_parse_max_chars(document.get("max_chars"), "max_chars"),
        pseudonymize_users=pseudonymize_users,
        apps=apps,
        hmac_key=hmac_key,
        source=source)


def _reject_unknown(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise _PolicyError(f"{prefix}{unknown[0]}: unknown setting (expected one of {', '.join(sorted(allowed))})")


def _check_rule_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise _PolicyError(f"{where}: rule names are lower_snake_case")
    if name in DETECTOR_NAMES or name in ("max_chars", "pseudonymize_users", "extra_drop_keys", "extra_hash_keys"):
        raise _PolicyError(f"{where}: the name is taken by a built-in rule")


def _parse_action(spec: Any, where: str) -> Action:
    """An action is written `mask`, or as a mapping {action: truncate, keep_chars: 4}."""
    if isinstance(spec, str):
        spec = {"action": spec}
    if not isinstance(spec, dict):
        raise _PolicyError(f"{where}: expected an action ({', '.join(ACTIONS)})")
    kind = spec.get("action")
    if kind not in ACTIONS:
        raise _PolicyError(f"{where}.action: {kind!r} is not one of {', '.join(ACTIONS)}")
    keep_chars = spec.get("keep_chars", DEFAULT_KEEP_CHARS)
    if not isinstance(keep_chars, int) or isinstance(keep_chars, bool) or keep_chars < 0:
        raise _PolicyError(f"{where}.keep_chars: {keep_chars!r} is not a whole number >= 0")
    return Action(kind, keep_chars)


def _parse_detector_actions(doc: Any, where: str) -> dict[str, Action]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise _PolicyError(f"{where}: must map a detector name to an action")
    actions = {}
    for name, spec in doc.items():
        if name not in DETECTOR_NAMES:
            raise _PolicyError(f"{where}.{name}: unknown detector (known: {', '.join(DETECTOR_NAMES)})")
        actions[name] = _parse_action(spec, f"{where}.{name}")
    return actions


def _parse_key_patterns(doc: Any, where: str) -> tuple[str, ...]:
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise _PolicyError(f"{where}: must be a list of key patterns")
    patterns = []
    for index, pattern in enumerate(doc):
        if not isinstance(pattern, str) or not _KEY_PATTERN_CHARS.fullmatch(pattern.lower()) \
                or not re.search(r"[a-z0-9]", pattern.lower()):
            raise _PolicyError(f"{where}[{index}]: {pattern!r} is not a key pattern "
                               "(letters, digits, _ - . space and *)")
        patterns.append(pattern.lower())
    return tuple(patterns)


def _parse_max_chars(doc: Any, where: str) -> dict[str, int]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise _PolicyError(f"{where}: must map a column to a length")
    limits = {}
    for column, limit in doc.items():
        if column not in ROW_TEXT_FIELDS:
            raise _PolicyError(f"{where}.{column}: not a text column (one of {', '.join(ROW_TEXT_FIELDS)})")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _PolicyError(f"{where}.{column}: {limit!r} is not a whole number >= 1")
        limits[column] = limit
    return limits
