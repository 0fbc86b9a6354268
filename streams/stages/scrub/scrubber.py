"""The scrubber: one policy applied to rows, batches held as columns (the pipeline's path), wire
messages, profiles and log text.

Speed: a clean event costs one search of one combined prefilter over all its text. The
prefilter is a superset of everything the detailed pass can change, so only events it hits
are parsed and run through the detectors; the detailed pass alone decides what changes.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import operator
from typing import Any

from streams.contract import UserAction, UserProfile
from streams.stages.scrub.detectors import (ACTION_TEXT_FIELDS, ROW_TEXT_FIELDS, TRUNCATION_MARK, _PSEUDONYM,
                                            _PSEUDONYM_CACHE_SIZE)
from streams.stages.scrub.rules import _Prefilter, _Rules
from streams.stages.scrub.values import ValueScrubber, _DROPPED, _Hit, _add, _picker

log = logging.getLogger(__name__)
_first = operator.itemgetter(0)


class Scrubber(ValueScrubber):
    """Applies one policy to rows, wire messages, profiles and log text. Not thread-safe (caches)."""

    # ---- public API

    def scrub_user(self, user: str) -> str:
        """The user id as it is stored: what joins (profiles, enrich) must look users up by. The same in
        every app: the all-apps counts and the profile join depend on it."""
        return self._stored_user(user)[0]

    def scrub_columns(self, columns: dict[str, list]) -> dict[str, list]:
        """Scrub an enriched batch held as columns (the pipeline's path), in place; each row's audit
        entries are appended to its `scrubbed_fields`.

        The prefilter searches each text column of the batch at once (a few C-level joins and
        searches); only the rows it flags take the per-row detailed pass."""
        audits = columns["scrubbed_fields"]
        users = columns["user"]
        flagged_rows: set[int] = set()
        for rules, indexes in self._groups_by_rules(columns["app"]):
            # the group's values of a column: the column itself, or picked out in C
            of = (lambda column: column) if indexes is None else _picker(indexes)
            texts = {name: of(columns[name]) for name in ROW_TEXT_FIELDS}
            positions = self._flag_rows(list(texts.values()), of(columns["properties"]), rules)
            for name, limit in rules.max_chars:  # too long: the detailed pass truncates
                values = texts[name] if name in texts else of(columns[name]) if name in columns else ()
                if values and max(map(len, values)) > limit:
                    positions.update(i for i, value in enumerate(values) if len(value) > limit)
            flagged = positions if indexes is None else {indexes[i] for i in positions}
            for index in flagged:
                self._scrub_record_at(columns, index, rules)
            flagged_rows |= flagged
        # each distinct user judged once; a flagged row's user went through the detailed pass
        stored = {user: self._stored_user(user) for user in set(users)}  # cached by the scrubber
        entries = {user: f"user:hmac:{reason}" for user, (_, reason) in stored.items() if reason}
        if entries:
            row_entries = list(map(entries.get, users))
            for index in flagged_rows:
                row_entries[index] = None
            users[:] = list(map(_first, map(stored.__getitem__, users)))
            # an unflagged row's audit is empty so far: each entry appended, in C (append gives None)
            any(map(list.append, itertools.compress(audits, row_entries), filter(None, row_entries)))
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
        key_sets = list(map(tuple, properties))  # a batch has a few key sets: each judged once
        flagged_sets = {key_set for key_set in set(key_sets) if key_set and self._keys_flagged(key_set, rules)}
        if flagged_sets:
            flagged.update(index for index, key_set in enumerate(key_sets) if key_set in flagged_sets)
        property_texts = list(map("\n".join, map(dict.values, properties)))
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

    def _keys_flagged(self, keys, rules: _Rules) -> bool:
        """Whether a key rule applies to any of some keys (of a properties map). Keys come from a small
        vocabulary: each key set is decided once (only clean sets are kept: no secret-as-key in memory)."""
        key_set = tuple(keys)
        if key_set in rules.clean_key_sets:
            return False
        if any(self._key_decision(key, rules) is not None for key in key_set):
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


class SourceScrubber(Scrubber):
    """A producer's scrubber without the deployment's key: secrets are removed at the source, but
    what would be pseudonymised is left for the worker. A pseudonym made here under another key
    would give one person two ids."""

    NO_KEY = "unused: the worker makes the pseudonyms"

    def pseudonym(self, value: str) -> str:
        return value
