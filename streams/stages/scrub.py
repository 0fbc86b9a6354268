"""Scrub: take secrets and personal data out of events before anything is written.

Lightdash's rule, made a policy file (streams/policies/scrub.yaml): never track passwords,
secrets, credentials, query SQL or schema names. Key rules drop or hash values by key name
(JSON at any depth, the `properties` map, `name=value` in free text); value detectors find
tokens, keys, card numbers, emails and IPs anywhere in a string. User ids and emails become
keyed HMAC pseudonyms, so distinct counts stay exact. Every change is recorded in the row's
`scrubbed_fields` as "<field>[.<json path or key>]:<action>:<rule>".

Speed: a clean event costs one search of one combined prefilter over all its text. The
prefilter is a superset of everything the detailed pass can change, so only events it hits
are parsed and run through the detectors; the detailed pass alone decides what changes.
"""
from __future__ import annotations

import bisect
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

try:  # RE2 scans once in a DFA; stdlib `re` tries every candidate position (about 3x slower here)
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

from streams.contract import UserAction, UserProfile

log = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = Path(__file__).resolve().parent.parent / "policies" / "scrub.yaml"
DEVELOPMENT_HMAC_KEY = "tally-development-key-not-a-secret"

ACTIONS = ("drop", "mask", "hmac", "truncate", "keep")
DEFAULT_KEEP_CHARS = 8
TRUNCATION_MARK = "\u2026"

# Free-text and JSON columns of an enriched row, in the order they are scrubbed.
ROW_TEXT_FIELDS = ("host_name", "session_id", "pos_args_json", "keyword_args_json", "output", "error",
                   "label", "value", "location", "target_id", "search_term", "resource_key")
# The same fields as they exist on the wire message.
ACTION_TEXT_FIELDS = ("host_name", "session_id", "pos_args_json", "keyword_args_json", "output", "error",
                      "label", "value", "location", "target_id")

PSEUDONYM_PREFIX = "u_"
_PSEUDONYM = re.compile(r"u_[0-9a-f]{20}")
_PLACEHOLDER = re.compile(r"\[redacted:[a-z0-9_]+\]")
_PSEUDONYM_CACHE_SIZE = 200_000


def placeholder(rule: str) -> str:
    return f"[redacted:{rule}]"


# --------------------------------------------------------------------------- built-in detectors
# Each detector: the precise pattern (run on the original text by the detailed pass), and hints:
# lower-case patterns that every precise match contains once the text is lower-cased. The hints
# make up the prefilter; `secret_group` names the part of a match to replace (default: all of it).

_WS = r"(?:\s|\\[nrt])"  # whitespace, also as the escapes it becomes inside raw JSON text


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: str
    hints: tuple[str, ...]
    default_action: str = "mask"
    secret_group: str | None = None
    validate: Callable[[str], bool] | None = None


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _is_card_number(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return True
    # "4111 1111 1111 1111 7": a grouped card followed by some other number
    head = re.split(r"[ -]", candidate)[:-1]
    digits = "".join(head)
    return len(head) > 1 and 13 <= len(digits) <= 19 and luhn_ok(digits)


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


_SQL_HEADS = (  # (precise, hint); precise parts are matched case-insensitively
    # SELECT needs a column list or SQL punctuation before FROM, so "Select a table from the list" stays
    (rf"select{_WS}+(?:(?:distinct{_WS}+)?[\w.\"`]+(?:{_WS}*,{_WS}*[\w.\"`]+)*|[^;]*?[*,(][^;]*?){_WS}+from{_WS}",
     rf"select{_WS}"),
    (rf"insert{_WS}+into{_WS}", rf"insert{_WS}+into"),
    (rf"update{_WS}+\S+{_WS}+set{_WS}", rf"update{_WS}"),
    (rf"delete{_WS}+from{_WS}", rf"delete{_WS}+from"),
    (rf"create{_WS}+(?:or{_WS}+replace{_WS}+)?(?:temp(?:orary)?{_WS}+)?"
     rf"(?:table|view|materialized{_WS}+view|schema|database|index|function){_WS}", rf"create{_WS}"),
    (rf"drop{_WS}+(?:table|view|schema|database|index){_WS}", rf"drop{_WS}"),
    (rf"alter{_WS}+table{_WS}", rf"alter{_WS}"),
    (rf"merge{_WS}+into{_WS}", rf"merge{_WS}"),
    (rf"truncate{_WS}+table{_WS}", rf"truncate{_WS}"),
    (rf"with{_WS}+\w+{_WS}+as{_WS}*\(", rf"with{_WS}"),
)

_AWS_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "APKA")
_EMAIL_STOP = r"\s@<>()\[\]{},;:\"'=/\\|"
_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"

BUILTIN_DETECTORS: tuple[Detector, ...] = (
    Detector("private_key",
             r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----(?s:.*?)(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)",
             (r"-----begin",)),
    Detector("url_password",
             r"(?i:\b[a-z][a-z0-9+.-]*:(?:\\?/){2})[^\s/@:\"]*:(?P<url_password_secret>[^\s/@\"]+)@",
             (r":(?:\\?/){2}[^\s/@\"]*@",), secret_group="url_password_secret"),
    # key_assignment is built from the key rules (see _key_assignment_pattern)
    Detector("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", (r"eyj[a-z0-9_-]{8,}\.",)),
    Detector("bearer_token", rf"(?i:\bbearer{_WS}+)(?P<bearer_token_secret>[A-Za-z0-9\-._~+/]{{8,}}=*)",
             ("bearer",), secret_group="bearer_token_secret"),
    Detector("aws_access_key", rf"\b(?:{'|'.join(_AWS_PREFIXES)})[A-Z0-9]{{16}}\b",
             (rf"a(?:{'|'.join(p[1:].lower() for p in _AWS_PREFIXES)})[a-z0-9]{{16}}",)),
    Detector("gcp_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", (r"aiza[a-z0-9_-]{35}",)),
    Detector("gcp_oauth_token", r"\bya29\.[0-9A-Za-z_\-]{20,}", (r"ya29\.",)),
    Detector("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
             (r"gh[pousr]_[a-z0-9]{36}", r"github_pat_")),
    Detector("slack_token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}", (r"xox[abposre]-",)),
    Detector("slack_webhook", r"https:(?:\\?/){2}hooks\.slack\.com(?:\\?/)services(?:\\?/)[A-Za-z0-9/_\\-]+",
             (r"hooks\.slack\.com",)),
    Detector("sql_statement",
             r"(?:(?<![A-Za-z0-9_])|(?<=\\[nrt]))(?is:(?:" + "|".join(p for p, _ in _SQL_HEADS) + r")[^;]*;?)",
             tuple(h for _, h in _SQL_HEADS)),
    # 13-19 digits written plain, in groups of four, or as Amex 4-6-5; validated by Luhn.
    Detector("card_number",
             r"(?<![0-9])(?<![0-9][.,])(?:[2-6][0-9]{12,18}|[2-6][0-9]{3}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,4})?"
             r"|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{4,5})(?![0-9])",
             tuple(rf"{d}[0-9]{{3}}(?:[0-9]{{9}}|[ -][0-9]{{4}}[ -][0-9]|[ -][0-9]{{6}}[ -])" for d in "23456"),
             validate=_is_card_number),
    Detector("email",
             rf"(?<![^{_EMAIL_STOP}])[^{_EMAIL_STOP}]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,}}",
             (r"@[a-z0-9-]+\.[a-z0-9-]",), default_action="hmac"),
    Detector("ipv4", rf"(?<![0-9.])(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}(?![0-9]|\.[0-9])",
             (r"\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]",)),
    Detector("ipv6",
             r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})"
             r"(?![\w:]|\.[0-9])",
             (r"::", r":[0-9a-f]{1,4}:[0-9a-f]{1,4}:"), validate=_is_ipv6),
)
KEY_ASSIGNMENT = "key_assignment"
DETECTOR_NAMES = ("private_key", "url_password", KEY_ASSIGNMENT) + tuple(
    d.name for d in BUILTIN_DETECTORS if d.name not in ("private_key", "url_password"))
_DETECTOR_BY_NAME = {d.name: d for d in BUILTIN_DETECTORS}

# JSON text can hide any hint behind \uXXXX escapes; such text always takes the detailed pass.
_ESCAPE_HINT = r"\\u"


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


class Scrubber:
    """Applies one policy to rows, wire messages, profiles and log text. Not thread-safe (caches)."""

    def __init__(self, policy: ScrubPolicy) -> None:
        self.policy = policy
        self._key = policy.hmac_key
        self._default_rules = _compile_rules(policy, None)
        self._rules_by_app = {app: _compile_rules(policy, override) for app, override in policy.apps.items()}
        self._pseudonyms: dict[str, str] = {}
        self._stored_users: dict[str, tuple[str, str]] = {}  # user id -> (stored id, reason)

    # ---- public API

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

    def scrub_user(self, user: str) -> str:
        """The user id as it is stored: what joins (profiles, enrich) must look users up by. The same in
        every app: the all-apps counts and the profile join depend on it."""
        return self._stored_user(user)[0]

    def scrub_row(self, row: dict) -> dict:
        """Scrub an enriched event dict in place; appends audit entries to row["scrubbed_fields"]."""
        audit = row.get("scrubbed_fields")
        if audit is None:
            audit = row["scrubbed_fields"] = []
        elif not isinstance(audit, list):
            audit = row["scrubbed_fields"] = list(audit)
        self._scrub_record(row, ROW_TEXT_FIELDS, self._rules(row.get("app") or ""), audit)
        email = row.get("user_email")
        if email:
            row["user_email"] = self._scrub_email(email, audit)
        return row

    def scrub_columns(self, columns: dict[str, list]) -> dict[str, list]:
        """`scrub_row` for every row of a batch held as columns (the pipeline's path), in place.

        The prefilter searches each text column of the batch at once (a few C-level joins and
        searches); only the rows it flags take the per-row detailed pass of `scrub_row`."""
        audits = columns["scrubbed_fields"]
        users = columns["user"]
        flagged_rows: set[int] = set()
        for rules, indexes in self._groups_by_rules(columns["app"]):
            # the group's values of a column: the column itself, or picked out in C
            of = (lambda column: column) if indexes is None else _picker(indexes)
            positions = self._flag_rows([of(columns[name]) for name in ROW_TEXT_FIELDS],
                                        of(columns["properties"]), rules)
            for name, limit in rules.max_chars:  # too long: the detailed pass truncates
                values = of(columns[name]) if name in columns else ()
                if values and max(map(len, values)) > limit:
                    positions.update(i for i, value in enumerate(values) if len(value) > limit)
            flagged = positions if indexes is None else {indexes[i] for i in positions}
            for index in flagged:
                self._scrub_record_at(columns, index, rules)
            flagged_rows |= flagged
        known = self._stored_users.get
        for index, (stored_user, reason) in enumerate([known(user) or self._stored_user(user) for user in users]):
            if reason and index not in flagged_rows:  # a flagged row's user went through the detailed pass
                users[index] = stored_user
                _add(audits[index], f"user:hmac:{reason}")
        emails = columns.get("user_email")
        if emails and any(emails):
            for index, email in enumerate(emails):
                if email:
                    emails[index] = self._scrub_email(email, audits[index])
        return columns

    def scrub_action(self, action: UserAction) -> list[str]:
        """Scrub a wire message in place (dead letters, the producer SDK); returns the audit entries."""
        values: dict[str, Any] = {name: getattr(action, name) for name in ACTION_TEXT_FIELDS}
        values["user"] = action.user
        if action.properties:
            values["properties"] = dict(action.properties)
        audit: list[str] = []
        self._scrub_record(values, ACTION_TEXT_FIELDS, self._rules(action.app), audit)
        if audit:
            for name in ACTION_TEXT_FIELDS + ("user",):
                if getattr(action, name) != values[name]:
                    setattr(action, name, values[name])
            if "properties" in values and values["properties"] != dict(action.properties):
                action.properties.clear()
                action.properties.update(values["properties"])
        return audit

    def scrub_profile(self, profile: UserProfile) -> None:
        """Pseudonymise a profile's user and email exactly as events are, so joins still match."""
        profile.user = self.scrub_user(profile.user)
        if profile.email and not _PSEUDONYM.fullmatch(profile.email):
            profile.email = self.pseudonym(profile.email)

    def scrub_text(self, text: str, field: str = "", app: str = "") -> tuple[str, list[str]]:
        """Scrub one string (JSON or free text), e.g. a log line or a dead letter's detail."""
        rules = self._rules(app)
        if not text or not rules.prefilter.hits(text.lower()):
            return text, []
        audit: list[str] = []
        return self._scrub_string(text, field or "text", rules, audit, allow_json=True), audit

    # ---- records

    def _rules(self, app: str) -> _Rules:
        return self._rules_by_app.get(app, self._default_rules)

    def _scrub_record(self, values: dict, text_fields: tuple[str, ...], rules: _Rules, audit: list[str]) -> None:
        get = values.get
        texts = [get(name) or "" for name in text_fields]
        user = get("user") or ""
        properties = get("properties")
        properties_flagged = False
        if properties:
            properties_flagged = self._keys_flagged(properties, rules)
            texts.append("\n".join(properties.values()))
        # The fast path: one search over everything; a clean event stops here.
        prefilter = rules.prefilter
        lowered = "\n".join(texts).lower()
        for quoted_key, blank in rules.kept_json_keys:
            lowered = lowered.replace(quoted_key, blank)
        prepared = lowered.encode("utf-8", "surrogatepass") if prefilter.as_bytes else lowered
        hit_at = prefilter.first_hit(prepared, 0)
        properties_index = len(text_fields)
        hit_indexes = self._texts_hit(texts, lowered, prepared, hit_at, prefilter) if hit_at >= 0 else []
        if properties_flagged and properties_index not in hit_indexes:
            hit_indexes.append(properties_index)
        for index in hit_indexes:
            if index < properties_index:
                name = text_fields[index]
                values[name] = self._scrub_string(texts[index], name, rules, audit, allow_json=True)
            else:
                values["properties"] = self._scrub_properties(properties, rules, audit)
        if rules.max_chars and (hit_indexes or (len(lowered) > rules.shortest_limit
                                                and max(map(len, texts)) > rules.shortest_limit)):
            for name, limit in rules.max_chars:
                text = get(name)
                if text and len(text) > limit:
                    values[name] = text[:limit] + TRUNCATION_MARK
                    _add(audit, f"{name}:truncate:max_chars")
        if user:
            stored_user, reason = self._stored_user(user)
            if reason:
                values["user"] = stored_user
                _add(audit, f"user:hmac:{reason}")

    def _groups_by_rules(self, apps: list[str]) -> list[tuple[_Rules, list[int] | None]]:
        """The rows of a batch grouped by the rules that apply to them (an app's override or the
        default); None for "every row"."""
        if self._rules_by_app.keys().isdisjoint(apps):
            return [(self._default_rules, None)]
        groups: dict[int, tuple[_Rules, list[int]]] = {}
        append_to = {}  # app -> the append of its group's index list
        for app in set(apps):
            rules = self._rules(app)
            append_to[app] = groups.setdefault(id(rules), (rules, []))[1].append
        for index, app in enumerate(apps):
            append_to[app](index)
        return list(groups.values())

    def _scrub_record_at(self, columns: dict[str, list], index: int, rules: _Rules) -> None:
        """The detailed pass on row `index` of `columns`, written back in place."""
        names = (*ROW_TEXT_FIELDS, "user", "properties", *(name for name, _ in rules.max_chars if name in columns))
        values = {name: columns[name][index] for name in names}
        self._scrub_record(values, ROW_TEXT_FIELDS, rules, columns["scrubbed_fields"][index])
        for name, value in values.items():
            columns[name][index] = value

    def _flag_rows(self, text_columns: list[list[str]], properties: list[dict], rules: _Rules) -> set[int]:
        """The rows that any of their texts (or property values, or keys) send to the detailed pass."""
        flagged: set[int] = set()
        prefilter = rules.prefilter
        property_texts = []
        for index, found in enumerate(properties):
            if found:
                if self._keys_flagged(found, rules):
                    flagged.add(index)
                property_texts.append("\n".join(found.values()))
            else:
                property_texts.append("")
        for texts in (*text_columns, property_texts):
            if not any(texts):
                continue
            lowered = "\n".join(texts).lower()
            for quoted_key, blank in rules.kept_json_keys:
                lowered = lowered.replace(quoted_key, blank)
            prepared = prefilter.prepare(lowered)
            hit_at = prefilter.first_hit(prepared, 0)
            if hit_at >= 0:
                flagged.update(self._texts_hit(texts, lowered, prepared, hit_at, prefilter))
        return flagged

    def _keys_flagged(self, properties: dict[str, str], rules: _Rules) -> bool:
        """Whether a key rule applies to any key of a properties map. Keys come from a small
        vocabulary: each key set is decided once (only clean sets are kept: no secret-as-key in memory)."""
        key_set = tuple(properties)
        if key_set in rules.clean_key_sets:
            return False
        if any(self._key_decision(key, rules) is not None for key in properties):
            return True
        if len(rules.clean_key_sets) > 10_000:
            rules.clean_key_sets.clear()
        rules.clean_key_sets.add(key_set)
        return False

    def _scrub_email(self, email: str | None, audit: list[str]) -> str | None:
        if email and not _PSEUDONYM.fullmatch(email):
            _add(audit, "user_email:hmac:email")
            return self.pseudonym(email)
        return email

    def _stored_user(self, user: str) -> tuple[str, str]:
        """(stored id, reason) for a user id, cached: the same few users send most events. Judged by
        the default rules, whatever the app: one person has one stored id everywhere."""
        cached = self._stored_users.get(user)
        if cached is None:
            rules = self._default_rules
            if self.policy.pseudonymize_users or rules.prefilter.hits(user.lower()):
                cached = self._user_value(user, rules)
            else:
                cached = (user, "")
            if len(self._stored_users) >= _PSEUDONYM_CACHE_SIZE:
                self._stored_users.clear()
            self._stored_users[user] = cached
        return cached

    @staticmethod
    def _texts_hit(texts: list[str], lowered: str, prepared: str | bytes, hit_at: int,
                   prefilter: _Prefilter) -> list[int]:
        """Indexes of the texts the prefilter hits, given its first hit in all of them joined."""
        if not lowered.isascii():  # offsets no longer line up with the texts: look at each one
            return [i for i, text in enumerate(texts) if text and prefilter.hits(text.lower())]
        # where each text starts in the joined string: the lengths before it, plus one separator each
        starts = list(map(operator.add, itertools.accumulate(map(len, texts), initial=0), itertools.count()))
        hit_indexes = []
        while hit_at >= 0:
            if lowered[hit_at] == "\n":  # a key-start hint matched the separator before its text
                hit_at += 1
            index = bisect.bisect_right(starts, hit_at) - 1
            hit_indexes.append(index)
            if index + 1 >= len(texts):
                break
            hit_at = prefilter.first_hit(prepared, starts[index + 1] - 1)  # from the separator: a key start
        return hit_indexes

    def _user_value(self, user: str, rules: _Rules) -> tuple[str, str | None]:
        if not user or _PSEUDONYM.fullmatch(user):
            return user, None
        if self.policy.pseudonymize_users:
            return self.pseudonym(user), "pseudonymize_users"
        if "@" in user or rules.prefilter.hits(user.lower()):
            hits: list[_Hit] = []
            self._detect(user, rules, hits)
            if hits:  # an email or a secret as the id: pseudonymise the whole id so counts stay exact
                return self.pseudonym(user), hits[0][1]
        return user, None

    def _scrub_properties(self, properties: dict[str, str], rules: _Rules, audit: list[str]) -> dict[str, str]:
        scrubbed = {}
        for key, value in properties.items():
            decision = self._key_decision(key, rules)
            if isinstance(decision, str):  # a secret as a key: never echo it in a path
                _add(audit, f"properties.*:drop:{decision}")
                continue
            if decision is not None:
                new_value = self._apply_key_rule(value, decision)
                if new_value is _DROPPED:
                    _add(audit, f"properties.{key}:drop:{decision.name}")
                    continue
                if new_value != value:
                    _add(audit, f"properties.{key}:{decision.action.kind}:{decision.name}")
                scrubbed[key] = new_value
                continue
            if value and rules.prefilter.hits(value.lower()):
                value = self._scrub_string(value, f"properties.{key}", rules, audit, allow_json=True)
            scrubbed[key] = value
        return scrubbed

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


# --------------------------------------------------------------------------- logs


class ScrubLogFilter(logging.Filter):
    """Scrubs every log record's message (and formatted traceback) before any handler writes it."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed, audit = self.scrubber.scrub_text(message, "log")
        if audit:
            record.msg, record.args = scrubbed, ()  # () not None: other handlers format it again
        if record.exc_info and not record.exc_text:
            record.exc_text = self.scrubber.scrub_text(logging.Formatter().formatException(record.exc_info), "log")[0]
        return True


def scrub_logs(scrubber: Scrubber, logger: logging.Logger | None = None) -> None:
    """Attach a ScrubLogFilter to every handler of `logger` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(ScrubLogFilter(scrubber))
