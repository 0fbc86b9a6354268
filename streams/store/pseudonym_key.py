"""The pseudonym (HMAC) key: one per deployment, for the life of its data.

In production the key comes from TALLY_HMAC_KEY. Without it, a data directory makes a key the
first time a worker opens it and keeps it beside the data (`hmac.key`, owner-only), so a
restarted worker, the demo's generator and `tally report --user` make the same pseudonyms.

The store keeps the key's fingerprint (never the key). A worker whose key has another
fingerprint refuses to start: its pseudonyms would split every person in two.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "hmac.key"
FINGERPRINT_NAME = "hmac_key_fingerprint"


class KeyMismatch(RuntimeError):
    """The key differs from the one the stored rows were made with."""


def key_path(data_dir: Path) -> Path:
    return Path(data_dir) / KEY_FILE


def read_local_key(data_dir: Path) -> str:
    """The data directory's key, or "" when it has none yet."""
    try:
        return key_path(data_dir).read_text().strip()
    except FileNotFoundError:
        return ""


def ensure_local_key(data_dir: Path) -> str:
    """The data directory's key, made once (owner-only) when it has none."""
    existing = read_local_key(data_dir)
    if existing:
        return existing
    path = key_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    try:  # O_EXCL: two processes starting at once agree on the first key written
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_local_key(data_dir)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    return key


def with_key(settings, create: bool):
    """Settings whose hmac_key is TALLY_HMAC_KEY, else the data directory's key (made if `create`)."""
    if settings.hmac_key:
        return settings
    key = ensure_local_key(settings.data_dir) if create else read_local_key(settings.data_dir)
    return settings.replace(hmac_key=key) if key else settings


def fingerprint(key: str) -> str:
    """Names the key without revealing it: an HMAC of a fixed text under the key."""
    return hmac.new(key.encode("utf-8"), b"tally pseudonym key fingerprint", hashlib.sha256).hexdigest()[:16]


def check_store(client, key: str) -> None:
    """Record the key's fingerprint in a store that has none; refuse a key that differs."""
    mine = fingerprint(key)
    rows = client.query("SELECT value FROM tally_meta FINAL WHERE name = %(name)s",
                        parameters={"name": FINGERPRINT_NAME}).result_rows
    if not rows:
        client.insert("tally_meta", [[FINGERPRINT_NAME, mine]], column_names=["name", "value"])
        return
    stored = rows[0][0]
    if stored != mine:
        raise KeyMismatch(
            f"the pseudonym key (fingerprint {mine}) is not the one the stored rows were made with "
            f"(fingerprint {stored}): every user would get a second pseudonym. Set TALLY_HMAC_KEY to the "
            f"original key, or use a new --data-dir (or ClickHouse database) for a new key")
