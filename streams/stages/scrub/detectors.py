"""Scrub's built-in value detectors (tokens, keys, card numbers, emails, IPs, SQL) and the constants
the other scrub modules share."""
from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable




log = logging.getLogger(__name__)


DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[2] / "policies" / "scrub.yaml"
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


def is_pseudonym(user: str) -> bool:
    """Whether a user id is already a keyed pseudonym (made by the pipeline, or by the SDK with its key)."""
    return _PSEUDONYM.fullmatch(user) is not None


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
