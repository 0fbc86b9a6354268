"""A policy compiled for one app: key matchers, the detectors' combined regex, and the prefilter that
lets clean text through with one search."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


try:  # RE2 scans once in a DFA; stdlib `re` tries every candidate position (about 3x slower here)
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

from streams.stages.scrub.detectors import DETECTOR_NAMES, KEY_ASSIGNMENT, _DETECTOR_BY_NAME, _ESCAPE_HINT
from streams.stages.scrub.policy import Action, AppOverride, KeyRule, ScrubPolicy

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- compiled rules

_SEPARATOR = "[-_. ]?"


def _key_regex(pattern: str, wildcard: str) -> str:
    """A key pattern as a regex over the lower-cased key."""
    parts: list[str] = []
    for char in pattern:
        if char == "*":
            parts.append(wildcard)
        elif char in "-_. ":
            if parts and parts[-1] in (_SEPARATOR, wildcard):
                continue
            parts.append(_SEPARATOR)
        else:
            parts.append(re.escape(char))
    while parts and parts[-1] == _SEPARATOR:
        parts.pop()
    while parts and parts[0] == _SEPARATOR:
        parts.pop(0)
    return "".join(parts)


# What follows a key in text: a quote, `:`, `=`, whitespace or the end. Requiring it after a
# pattern's last literal keeps `query_term` from waking the detailed pass for the rule `query`.
_KEY_END = "(?:[^a-z0-9_.-]|$)"
# And what comes before a key that starts with a literal: keeps `bigquery://` from matching `query`.
_KEY_START = "(?:^|[^a-z0-9_.-])"


def _key_hints(pattern: str) -> list[str]:
    """Literal parts every key matching the pattern contains: its share of the prefilter."""
    parts = [part.strip("-_. ") for part in pattern.split("*")]
    hints = [_key_regex(part, "") for part in parts if part]
    if hints and parts[-1]:  # the pattern ends in a literal, so the key ends there too
        hints[-1] += _KEY_END
    if hints and parts[0]:  # ... and starts with one
        hints[0] = _KEY_START + hints[0]
    return hints


def _key_assignment_pattern(groups: list[tuple[str, str]]) -> str:
    """`name=value`, `name: value`, `"name": "value"` and `--name value` in free text.

    groups: (group name, regex of key patterns) per key rule, so a match tells its rule.
    """
    names = "|".join(f"(?P<{group}>{regex})" for group, regex in groups)
    return (rf"(?<![A-Za-z0-9_.-])(?P<kv_dash>--?)?(?i:(?P<kv_name>{names}))[\"']?"
            r"(?:\s*[:=]\s*|(?(kv_dash)\s+|(?!)))"
            r"(?:\"(?P<kv_dq>[^\"\n]*)\"|'(?P<kv_sq>[^'\n]*)'"
            r"|(?P<kv_bare>\[redacted:[a-z0-9_]+\]|(?i:(?:bearer|basic|token|digest)\s+)?[^\s,;&\"'<>)\]}]+))")


class _Prefilter:
    """One search over lower-cased text: is there anything the detailed pass might change?

    `first_hit(prepared, position)` gives where the first hit at or after position starts, or -1;
    `prepare` turns lower-cased text into what the engine searches. With RE2 that is UTF-8 bytes
    read as Latin-1: the hints are ASCII, and a byte of a multi-byte character still matches
    wherever a non-ASCII character would.
    """

    def __init__(self, hints: Iterable[str]) -> None:
        unique = list(dict.fromkeys(hints))
        present = set(unique)  # "password" already covers "password" + _KEY_END
        unique = [h for h in unique if not (h.endswith(_KEY_END) and h[:-len(_KEY_END)] in present)
                  and not (h.startswith(_KEY_START) and h[len(_KEY_START):] in present)]
        anywhere = [h for h in unique if not h.startswith(_KEY_START)]
        key_starts = [h[len(_KEY_START):] for h in unique if h.startswith(_KEY_START)]
        self.source = "|".join(filter(None, (
            _first_char_trie(anywhere), key_starts and f"{_KEY_START}(?:{_first_char_trie(key_starts)})")))
        self.backend = "re"
        self.as_bytes = False
        self.first_hit = _stdlib_first_hit(re.compile(self.source))
        if _re2 is not None:
            options = _re2.Options()
            options.max_mem = 64 << 20
            options.encoding = _re2.Options.Encoding.LATIN1
            options.never_capture = True
            # RE2 has no lookaround; the hints use none, so one source serves both engines.
            compiled = _re2.compile(self.source.encode("ascii"), options)
            self.first_hit = _re2_first_hit(compiled)
            self.as_bytes = True
            self.backend = "re2"

    def prepare(self, lowered_text: str) -> str | bytes:
        return lowered_text.encode("utf-8", "surrogatepass") if self.as_bytes else lowered_text

    def hits(self, lowered_text: str) -> bool:
        return self.first_hit(self.prepare(lowered_text), 0) >= 0


def _stdlib_first_hit(compiled: re.Pattern) -> Callable[[str, int], int]:
    search = compiled.search

    def first_hit(text: str, position: int) -> int:
        match = search(text, position)
        return -1 if match is None else match.start()
    return first_hit


def _re2_first_hit(compiled: Any) -> Callable[[bytes, int], int]:
    try:  # RE2's matcher without the Python wrapper around it: a third of the cost on short texts
        regexp = compiled._regexp
        unanchored = type(regexp).Anchor.UNANCHORED
        regexp.Match(unanchored, b"", 0, 0)
    except Exception:  # a google-re2 without these internals: the public API
        def first_hit(text: bytes, position: int) -> int:
            match = compiled.search(text, position)
            return -1 if match is None else match.start()
        return first_hit
    match_spans = regexp.Match

    def first_hit(text: bytes, position: int) -> int:
        return match_spans(unanchored, text, position, len(text))[0][0]  # (-1, -1) when none
    return first_hit


def _first_char_trie(hints: list[str]) -> str:
    """Group alternatives by their first character: stdlib `re` then skips most branches at once."""
    by_first: dict[str, list[str]] = {}
    for hint in hints:
        first_len = 2 if hint.startswith("\\") else 1
        by_first.setdefault(hint[:first_len], []).append(hint[first_len:])
    alternatives = []
    for first, rests in by_first.items():
        alternatives.append(first + rests[0] if len(rests) == 1 else first + "(?:" + "|".join(rests) + ")")
    return "|".join(alternatives)


@dataclass
class _Rules:
    """The policy compiled for one app."""
    key_rules: dict[str, KeyRule]             # regex group name -> rule
    keep: re.Pattern | None
    key_matcher: re.Pattern | None
    detectors: dict[str, Action]
    detector_regex: re.Pattern | None
    prefilter: _Prefilter
    max_chars: tuple[tuple[str, int], ...]
    shortest_limit: int
    # JSON keys kept although a rule's pattern covers them ("query_id" under "query_*"): blanked,
    # same length, before the prefilter looks, so they don't send every event down the detailed pass.
    kept_json_keys: tuple[tuple[str, str], ...]
    key_cache: dict[str, KeyRule | None] = field(default_factory=dict)
    key_decisions: dict[str, KeyRule | str | None] = field(default_factory=dict)
    clean_key_sets: set[tuple[str, ...]] = field(default_factory=set)  # property key sets no rule touches

    def rule_for_key(self, key: str) -> KeyRule | None:
        try:
            return self.key_cache[key]
        except KeyError:
            pass
        lowered = key.lower()
        rule = None
        if self.key_matcher is not None and not (self.keep is not None and self.keep.fullmatch(lowered)):
            match = self.key_matcher.fullmatch(lowered)
            if match is not None:
                rule = self.key_rules[match.lastgroup]
        if len(self.key_cache) > 50_000:
            self.key_cache.clear()
        self.key_cache[key] = rule
        return rule


def _compile_rules(policy: ScrubPolicy, override: AppOverride | None) -> _Rules:
    override = override or AppOverride()
    rules = list(policy.key_rules)
    if override.extra_drop_keys:
        rules.insert(0, KeyRule("extra_drop_keys", Action("drop"), override.extra_drop_keys))
    if override.extra_hash_keys:
        rules.insert(0, KeyRule("extra_hash_keys", Action("hmac"), override.extra_hash_keys))
    keep_patterns = policy.keep_keys + override.keep_keys
    detectors = {**policy.detectors, **override.detectors}
    max_chars = {**policy.max_chars, **override.max_chars}

    group_rules = {f"k{i}": rule for i, rule in enumerate(rules)}
    full_groups = [(group, "|".join(_key_regex(p, ".*") for p in rule.keys)) for group, rule in group_rules.items()]
    key_matcher = re.compile("|".join(f"(?P<{g}>{rx})" for g, rx in full_groups)) if rules else None
    keep = re.compile("|".join(_key_regex(p, ".*") for p in keep_patterns)) if keep_patterns else None

    hints = [hint for rule in rules for pattern in rule.keys for hint in _key_hints(pattern)]
    precise = []
    for name in DETECTOR_NAMES:
        if detectors[name].kind == "keep":
            continue
        if name == KEY_ASSIGNMENT:
            if rules:
                text_groups = [(group, "|".join(_key_regex(p, "[a-z0-9_.-]*") for p in rule.keys))
                               for group, rule in group_rules.items()]
                precise.append(f"(?P<{KEY_ASSIGNMENT}>{_key_assignment_pattern(text_groups)})")
            continue
        detector = _DETECTOR_BY_NAME[name]
        precise.append(f"(?P<{name}>{detector.pattern})")
        hints.extend(detector.hints)
    hints.append(_ESCAPE_HINT)
    detector_regex = re.compile("|".join(precise)) if precise else None
    kept_json_keys = tuple(
        (f'"{pattern}"', '"' + "\0" * len(pattern) + '"') for pattern in keep_patterns
        if "*" not in pattern and re.fullmatch(r"[a-z0-9_.-]+", pattern)
        and key_matcher is not None and key_matcher.fullmatch(pattern)
        and (detector_regex is None or not detector_regex.search(pattern)))
    return _Rules(
        key_rules=group_rules,
        keep=keep,
        key_matcher=key_matcher,
        detectors=detectors,
        detector_regex=detector_regex,
        prefilter=_Prefilter(hints),
        max_chars=tuple(max_chars.items()),
        shortest_limit=min(max_chars.values(), default=0),
        kept_json_keys=kept_json_keys)
