"""Finding a person by the id or email a human knows.

Emails (and ids the policy pseudonymises) are never stored in clear, so a query parameter
holding one could match nothing. `stored_ids` binds such a value to its stored pseudonym, made
with the deployment's key: TALLY_HMAC_KEY, else the data directory's `hmac.key`.
"""
from __future__ import annotations

from streams.store import pseudonym_key

FINGERPRINT_SQL = "SELECT value FROM tally_meta FINAL WHERE name = {name:String}"


class LookupError_(Exception):
    """No key to make the pseudonym with, or not the deployment's key."""


def stored_ids(settings, target, params: dict[str, str], only: set[str] | None = None) -> tuple[dict, list[str]]:
    """(params with every person's id or email replaced by its stored form, a note per replacement).

    `only` names the parameters that always hold a person (a report's `user`); any other parameter
    is replaced only when its value would be stored differently (an email, a secret)."""
    from streams.stages.scrub import Scrubber, load_policy

    candidates = {name: value for name, value in params.items()
                  if isinstance(value, str) and value and (only is None or name in only)}
    if not candidates:
        return params, []
    key = pseudonym_key.with_key(settings, create=False).hmac_key
    if not key:
        if not any("@" in value for value in candidates.values()):
            return params, []
        raise LookupError_(f"cannot look up an email: no pseudonym key (TALLY_HMAC_KEY is not set and "
                           f"{pseudonym_key.key_path(settings.data_dir)} does not exist); set TALLY_HMAC_KEY "
                           f"to the deployment's key")
    scrub_user = Scrubber(load_policy(settings.scrub_policy, key)).scrub_user
    bound, notes = dict(params), []
    for name, value in candidates.items():
        stored = scrub_user(value)
        if stored != value:
            bound[name] = stored
            notes.append(f"--{name}: {value!r} is stored as its pseudonym {stored}")
    if notes:
        _check_fingerprint(target, key)
    return bound, notes


def _check_fingerprint(target, key: str) -> None:
    try:
        _, rows = target.query(FINGERPRINT_SQL, {"name": pseudonym_key.FINGERPRINT_NAME})
    except Exception:  # a store from before the fingerprint was kept: nothing to compare with
        return
    if rows and rows[0][0] != pseudonym_key.fingerprint(key):
        raise LookupError_("this pseudonym key is not the one the stored rows were made with, so no email "
                           "would match: set TALLY_HMAC_KEY to the deployment's key")
