"""Scrubbing one value: strings, JSON at any depth, key rules and detector replacements, and the
keyed pseudonyms."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import operator
import re
from typing import Any, Callable

from streams.stages.scrub.detectors import (KEY_ASSIGNMENT, PSEUDONYM_PREFIX, TRUNCATION_MARK,
                                            _DETECTOR_BY_NAME, _PLACEHOLDER, _PSEUDONYM,
                                            _PSEUDONYM_CACHE_SIZE, placeholder)
from streams.stages.scrub.policy import Action, KeyRule, ScrubPolicy
from streams.stages.scrub.rules import _Rules, _compile_rules

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the scrubber

_Hit = tuple[str, str]  # (action, rule)
_NOT_JSON = object()


def _picker(indexes: list[int]) -> Callable[[list], tuple]:
    """A function that picks the values at `indexes` out of a column, in C."""
    if len(indexes) == 1:
        index = indexes[0]
        return lambda column: (column[index],)
    return operator.itemgetter(*indexes)
_UNKNOWN = object()


class ValueScrubber:
    """Scrubs single values by one policy: the detailed pass that `Scrubber` runs on what the prefilter flags."""

    def __init__(self, policy: ScrubPolicy) -> None:
        self.policy = policy
        self._key = policy.hmac_key
        self._default_rules = _compile_rules(policy, None)
        self._rules_by_app = {app: _compile_rules(policy, override) for app, override in policy.apps.items()}
        self._pseudonyms: dict[str, str] = {}
        self._stored_users: dict[str, tuple[str, str]] = {}  # user id -> (stored id, reason)


    def pseudonym(self, value: str) -> str:
        """Keyed HMAC-SHA256 pseudonym: the same value and key always give the same one."""
        cached = self._pseudonyms.get(value)
        if cached is None:
            digest = hmac.new(self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
            cached = PSEUDONYM_PREFIX + digest[:20]
            if len(self._pseudonyms) >= _PSEUDONYM_CACHE_SIZE:
                self._pseudonyms.clear()
            self._pseudonyms[value] = cached
        return cached

    # ---- strings and JSON

    def _scrub_string(self, text: str, path: str, rules: _Rules, audit: list[str], allow_json: bool) -> str:
        if allow_json and text.lstrip()[:1] in ("{", "["):
            try:
                document = json.loads(text)
            except (ValueError, RecursionError):
                document = _NOT_JSON
            if isinstance(document, (dict, list)):
                try:
                    scrubbed, changed = self._scrub_json(document, path, rules, audit)
                except RecursionError:  # deeper than Python recurses: detectors on the raw text
                    pass
                else:
                    return _dumps(scrubbed) if changed else text
        hits: list[_Hit] = []
        scrubbed_text = self._detect(text, rules, hits)
        for action, rule in hits:
            _add(audit, f"{path}:{action}:{rule}")
        return scrubbed_text

    def _scrub_json(self, node: Any, path: str, rules: _Rules, audit: list[str]) -> tuple[Any, bool]:
        if isinstance(node, str):
            if node and rules.prefilter.hits(node.lower()):
                scrubbed = self._scrub_string(node, path, rules, audit, allow_json=True)
                return scrubbed, scrubbed != node
            return node, False
        if isinstance(node, dict):
            return self._scrub_json_object(node, path, rules, audit)
        if isinstance(node, list):
            return self._scrub_json_array(node, path, rules, audit)
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 10**12:
            digits = str(node)  # a card number written as a JSON number
            if rules.prefilter.hits(digits):
                hits: list[_Hit] = []
                scrubbed = self._detect(digits, rules, hits)
                if hits:
                    for action, rule in hits:
                        _add(audit, f"{path}:{action}:{rule}")
                    return scrubbed, True
        return node, False

    def _scrub_json_object(self, node: dict, path: str, rules: _Rules, audit: list[str]) -> tuple[dict, bool]:
        scrubbed = {}
        changed = False
        for key, value in node.items():
            decision = self._key_decision(key, rules)
            if isinstance(decision, str):  # a secret as a key: never echo it in a path
                _add(audit, f"{path}.*:drop:{decision}")
                changed = True
                continue
            if decision is not None:
                new_value = self._apply_key_rule(value, decision)
                if new_value is _DROPPED:
                    _add(audit, f"{path}.{key}:drop:{decision.name}")
                    changed = True
                    continue
                if new_value != value:
                    _add(audit, f"{path}.{key}:{decision.action.kind}:{decision.name}")
                    scrubbed[key] = new_value
                    changed = True
                    continue
            new_value, value_changed = self._scrub_json(value, f"{path}.{key}", rules, audit)
            scrubbed[key] = new_value
            changed = changed or value_changed
        return scrubbed, changed

    def _scrub_json_array(self, node: list, path: str, rules: _Rules, audit: list[str]) -> tuple[list, bool]:
        scrubbed = []
        changed = False
        flag_rule: KeyRule | None = None  # ["--password", "hunter2"]: the flag names the next value's rule
        for index, value in enumerate(node):
            item_path = f"{path}[{index}]"
            if flag_rule is not None:
                rule, flag_rule = flag_rule, None
                new_value = self._apply_key_rule(value, rule)
                if new_value is _DROPPED:  # keep positions: a removed item would shift the next one into its place
                    new_value = placeholder(rule.name)
                if new_value == value:
                    scrubbed.append(value)
                    continue
                _add(audit, f"{item_path}:{'mask' if rule.action.kind == 'drop' else rule.action.kind}:{rule.name}")
                scrubbed.append(new_value)
                changed = True
                continue
            new_value, value_changed = self._scrub_json(value, item_path, rules, audit)
            if isinstance(value, str) and value.startswith("-") and "=" not in value and not value_changed:
                flag_rule = rules.rule_for_key(value.lstrip("-")) if rules.prefilter.hits(value.lower()) else None
            scrubbed.append(new_value)
            changed = changed or value_changed
        return scrubbed, changed

    def _key_decision(self, key: str, rules: _Rules) -> KeyRule | str | None:
        """For a JSON or property key: its key rule, or the detector that fires inside it (drop), or None."""
        cache = rules.key_decisions
        decision = cache.get(key, _UNKNOWN)
        if decision is not _UNKNOWN:
            return decision
        decision = None
        if rules.prefilter.hits(key.lower()):
            hits: list[_Hit] = []
            if self._detect(key, rules, hits) != key:
                return hits[0][1]  # not cached: keep secrets out of long-lived memory
            decision = rules.rule_for_key(key)
        if len(cache) > 50_000:
            cache.clear()
        cache[key] = decision
        return decision

    def _apply_key_rule(self, value: Any, rule: KeyRule) -> Any:
        """A value under a sensitive key: the rule's action, or _DROPPED."""
        kind = rule.action.kind
        if kind == "drop":
            return _DROPPED
        if kind == "mask":
            return placeholder(rule.name)
        text = value if isinstance(value, str) else _dumps(value)
        if kind == "hmac":
            if value is None or value == "" or (isinstance(value, str) and _PSEUDONYM.fullmatch(value)):
                return value
            return self.pseudonym(text)
        if kind == "truncate":
            return _truncate(text, rule.action.keep_chars) if len(text) > rule.action.keep_chars + 1 else value
        return value

    # ---- detectors

    def _detect(self, text: str, rules: _Rules, hits: list[_Hit]) -> str:
        """Run the value detectors over text; appends (action, rule) per change and returns the new text."""
        regex = rules.detector_regex
        if regex is None:
            return text
        pieces: list[str] = []
        copied_up_to = 0
        position = 0
        drop_whole = False
        while True:
            match = regex.search(text, position)
            if match is None:
                break
            change = self._replacement(match, rules)
            if change is None:  # not a real hit (Luhn, address syntax, kept key): look again one char on
                position = match.start() + 1
                continue
            start, end, replacement, action, rule = change
            pieces.append(text[copied_up_to:start])
            pieces.append(replacement)
            copied_up_to = end
            position = max(match.end(), match.start() + 1)
            hit = (action, rule)
            if hit not in hits:
                hits.append(hit)
            drop_whole = drop_whole or action == "drop"
        if not pieces:
            return text
        if drop_whole:
            return ""
        pieces.append(text[copied_up_to:])
        return "".join(pieces)

    def _replacement(self, match: re.Match, rules: _Rules) -> tuple[int, int, str, str, str] | None:
        name = match.lastgroup
        if name == KEY_ASSIGNMENT:
            return self._key_assignment_replacement(match, rules)
        detector = _DETECTOR_BY_NAME[name]
        group = detector.secret_group or name
        start, end = match.span(group)
        secret = match.group(group)
        if detector.validate is not None and not detector.validate(secret):
            return None
        if _PLACEHOLDER.fullmatch(secret) or _PSEUDONYM.fullmatch(secret):
            return None
        action = rules.detectors[name]
        return start, end, self._replace(secret, action, name), action.kind, name

    def _key_assignment_replacement(self, match: re.Match, rules: _Rules) -> tuple[int, int, str, str, str] | None:
        name = match.group("kv_name")
        if rules.keep is not None and rules.keep.fullmatch(name.lower()):
            return None
        group = next(g for g in ("kv_dq", "kv_sq", "kv_bare") if match.group(g) is not None)
        secret = match.group(group)
        if not secret or _PLACEHOLDER.fullmatch(secret) or _PSEUDONYM.fullmatch(secret):
            return None
        rule = next(rules.key_rules[g] for g in rules.key_rules if match.group(g) is not None)
        action = rule.action
        if rules.detectors[KEY_ASSIGNMENT].kind == "drop":
            action = Action("drop")
        elif action.kind == "drop":
            action = Action("mask")  # free text keeps the name, so an analyst sees what was there
        start, end = match.span(group)
        return start, end, self._replace(secret, action, rule.name), action.kind, rule.name

    def _replace(self, secret: str, action: Action, rule: str) -> str:
        if action.kind == "hmac":
            return self.pseudonym(secret)
        if action.kind == "truncate":
            return _truncate(secret, action.keep_chars)
        if action.kind == "drop":
            return ""
        return placeholder(rule)


class _Dropped:
    def __repr__(self) -> str:
        return "<dropped>"


_DROPPED = _Dropped()


def _truncate(text: str, keep_chars: int) -> str:
    return text[:keep_chars] + TRUNCATION_MARK


def _dumps(document: Any) -> str:
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes: keep them escaped
        text = json.dumps(document, separators=(",", ":"))
    return text


def _add(audit: list[str], entry: str) -> None:
    if entry not in audit:
        audit.append(entry)
