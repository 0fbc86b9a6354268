"""Enrich: a validated `UserAction` becomes a row of `user_actions`.

Derived columns (duration, UTC time and day, weekend flag, readable event name), typed KPI
columns pulled out of the arguments by a declarative per-app mapping, the user's profile,
and a session id. Pure functions; the only state (profiles, open sessions) is passed in.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import operator
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from streams.contract import SCHEMA_VERSION, UserAction
from streams.stages.outcome import Source

SESSION_GAP_MS = 30 * 60_000
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


# ---- event names -------------------------------------------------------------------------

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@functools.lru_cache(maxsize=4096)
def event_name(command: str) -> str:
    """A readable, Proper Case name (the Amplitude seed's rule).

    `_get_table_metadata` -> "Get Table Metadata", `SearchSubmitted` -> "Search Submitted",
    `ViewRepogroup:python` -> "View Repogroup: python". Names already in the `<object>.<action>`
    convention (`dashboard.viewed`, the Lightdash seed) are kept as they are.
    """
    if "." in command and " " not in command:
        return command
    base, colon, qualifier = command.partition(":")
    spaced = _WORD_BOUNDARY.sub(" ", base.replace("_", " ").replace("-", " "))
    words = [w[:1].upper() + w[1:] for w in spaced.split()]
    name = " ".join(words) or command
    return f"{name}: {qualifier}" if colon else name


# ---- property mapping --------------------------------------------------------------------

KPI_COLUMNS = ("search_term", "result_index", "source", "resource_key", "target_type")
_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1  # result_index is a Nullable(Int32): out of range, it is unknown


@dataclass(frozen=True)
class PropertyMapping:
    """Column -> ordered sources, each a (kind, path) pair; per_app entries are already merged with default."""
    default: dict[str, tuple[tuple[str, tuple[str, ...]], ...]]
    per_app: dict[str, dict[str, tuple[tuple[str, tuple[str, ...]], ...]]]
    target_type_from_command: tuple[tuple[str, str], ...]
    _plans: dict = field(default_factory=dict, compare=False, repr=False)
    _target_types: dict = field(default_factory=dict, compare=False, repr=False)

    def for_app(self, app: str) -> dict:
        columns = self.per_app.get(app)
        return self.default if columns is None else columns

    def lookup_plan(self, app: str) -> "_LookupPlan":
        key = app if app in self.per_app else None  # None: the default plan, shared by every other app
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _lookup_plan(self.for_app(app))
        return plan

    def target_type_for(self, command: str) -> str:
        """The target type the first `target_type_from_command` pattern found in the command names ("" if none)."""
        target_type = self._target_types.get(command)
        if target_type is None:
            lowered = command.lower()
            target_type = next((t for pattern, t in self.target_type_from_command if pattern in lowered), "")
            if len(self._target_types) > 10_000:
                self._target_types.clear()
            self._target_types[command] = target_type
        return target_type


@dataclass(frozen=True)
class _LookupPlan:
    """An app's sources turned around: by argument/property key, the (rank, column) pairs it feeds.
    A column takes the value of its first source (lowest rank) that has one."""
    by_kwarg: dict[str, tuple[tuple[int, str], ...]]
    by_property: dict[str, tuple[tuple[int, str], ...]]
    others: tuple[tuple[int, str, str, tuple[str, ...]], ...]  # (rank, column, kind, path): fields, args, nested


def _lookup_plan(columns: dict) -> _LookupPlan:
    by_kwarg: dict[str, list] = {}
    by_property: dict[str, list] = {}
    others = []
    for column, sources in columns.items():
        for rank, (kind, path) in enumerate(sources):
            if kind == "kwargs" and len(path) == 1:
                by_kwarg.setdefault(path[0], []).append((rank, column))
            elif kind == "props":
                by_property.setdefault(path[0], []).append((rank, column))
            else:
                others.append((rank, column, kind, path))
    return _LookupPlan({k: tuple(v) for k, v in by_kwarg.items()}, {k: tuple(v) for k, v in by_property.items()},
                       tuple(others))


def _parse_sources(column: str, sources: list, where: str) -> tuple:
    if column not in KPI_COLUMNS:
        raise ValueError(f"{where}: unknown column {column!r}; expected one of {', '.join(KPI_COLUMNS)}")
    parsed = []
    for source in sources:
        kind, _, path = str(source).partition(".")
        if kind not in ("kwargs", "args", "props", "field") or not path:
            raise ValueError(f"{where}.{column}: bad source {source!r}; use kwargs.KEY, args.N, props.KEY or field.NAME")
        parsed.append((kind, tuple(path.split(".")) if kind == "kwargs" else (path,)))
    return tuple(parsed)


def load_mapping(path: str | Path | None = None) -> PropertyMapping:
    """Load and check the mapping file; None -> the bundled streams/policies/properties.yaml."""
    text = Path(path).read_text() if path else resources.files("streams.policies").joinpath("properties.yaml").read_text()
    doc = yaml.safe_load(text) or {}
    default = {c: _parse_sources(c, s, "default") for c, s in (doc.get("default") or {}).items()}
    per_app = {app: {**default, **{c: _parse_sources(c, s, f"apps.{app}") for c, s in cols.items()}}
               for app, cols in (doc.get("apps") or {}).items()}
    from_command = tuple((str(k), str(v)) for k, v in (doc.get("target_type_from_command") or {}).items())
    return PropertyMapping(default, per_app, from_command)


def _extract(plan: "_LookupPlan", action: UserAction, kwargs: dict, pos_args: list, properties: dict) -> dict:
    """The columns the plan's sources give: looks up only the keys the action has (a handful) rather
    than every source of every column."""
    best: dict[str, tuple[int, object]] = {}  # column -> (rank, value) of its best source so far
    if kwargs:
        _take_present(kwargs, plan.by_kwarg, best)
    if properties:
        _take_present(properties, plan.by_property, best)
    for rank, column, kind, path in plan.others:
        if column in best and best[column][0] < rank:
            continue
        if kind == "field":
            value = getattr(action, path[0], None)
        elif kind == "kwargs":
            value = kwargs.get(path[0]) if kwargs else None
            for part in path[1:]:
                value = value.get(part) if isinstance(value, dict) else None
        else:
            index = int(path[0])
            value = pos_args[index] if index < len(pos_args) else None
        if value is not None and value != "":
            best[column] = (rank, value)
    found = {column: value if type(value) is str or column == "result_index" else str(value)
             for column, (_, value) in best.items()}
    if "result_index" in found:
        try:
            index = int(found["result_index"])
        except (TypeError, ValueError, OverflowError):
            index = None
        found["result_index"] = index if index is not None and _INT32_MIN <= index <= _INT32_MAX else None
    return found


def _take_present(present: dict, feeds: dict, best: dict) -> None:
    for key in present.keys() & feeds.keys():
        value = present[key]
        if value is None or value == "":
            continue
        for rank, column in feeds[key]:
            if column not in best or rank < best[column][0]:
                best[column] = (rank, value)


# ---- the rows, column by column ----------------------------------------------------------

Columns = dict  # column name -> one value per row: how a batch of rows travels to the sink

# The wire fields a row copies as they are.
_COPIED_FIELDS = ("event_id", "app", "command", "user", "host_name", "session_id", "pos_args_json",
                  "keyword_args_json", "output", "error", "target_id", "label", "location", "value")
_read_properties = operator.attrgetter("properties")
# a KPI column's value out of what `_extract` found ("" when nothing, None for result_index), in C
_TAKE = {column: operator.methodcaller("get", column, None if column == "result_index" else "") for column in KPI_COLUMNS}


@functools.lru_cache(maxsize=4096)
def _day(days_since_epoch: int) -> tuple[dt.date, int]:
    """The UTC date and weekend flag of a day number: a stream has few days and many events per day."""
    day = dt.date.fromordinal(_EPOCH_DAY + days_since_epoch)
    return day, 1 if day.weekday() >= 5 else 0


def build_columns(fields: dict[str, list], actions: list[UserAction], sources: list[Source], kwargs: list[dict],
                  pos_args: list[list], mapping: PropertyMapping, ingested_ms: int) -> Columns:
    """The `user_actions` rows of validated actions (before scrubbing and the profile join), as
    columns: each derived column is computed in one pass over the batch, mostly in C. `fields` are
    the actions' wire fields as columns (`validate.read_fields`)."""
    n = len(actions)
    copied = {name: fields[name] for name in _COPIED_FIELDS}
    starts = fields["start_epoch_ms"]
    ends = list(map(max, fields["end_epoch_ms"], starts))  # an end of 0 means "no duration": end = start
    days, weekends = (list(c) for c in zip(*map(_day, [start // 86_400_000 for start in starts]))) if n else ([], [])
    # dict() of an empty map costs too; a comprehension reads a filled one faster than dict()
    properties = [{key: found[key] for key in found} if found else {} for found in map(_read_properties, actions)]
    extracted = list(map(_extract, map(mapping.lookup_plan, copied["app"]), actions, kwargs, pos_args, properties))
    return {
        **copied,
        "event_name": list(map(event_name, copied["command"])),
        "ts": starts,
        "ds": days,
        "is_weekend": weekends,
        "start_epoch_ms": starts,
        "end_epoch_ms": ends,
        "duration_ms": list(map(operator.sub, ends, starts)),
        "has_error": [1 if error else 0 for error in copied["error"]],
        "target_type": [found["target_type"] if "target_type" in found else mapping.target_type_for(command)
                        for found, command in zip(extracted, copied["command"])],
        "properties": properties,
        "search_term": list(map(_TAKE["search_term"], extracted)),
        "result_index": list(map(_TAKE["result_index"], extracted)),
        "source": list(map(_TAKE["source"], extracted)),
        "resource_key": list(map(_TAKE["resource_key"], extracted)),
        "user_email": [""] * n,
        "user_title": [""] * n,
        "user_team": [""] * n,
        "ab_flags": [{}] * n,  # shared and empty: a joined profile replaces it, nothing mutates it
        "scrubbed_fields": [[] for _ in range(n)],
        "kafka_partition": [source.partition for source in sources],
        "kafka_offset": [source.offset for source in sources],
        "ingested_at": [ingested_ms] * n,
    }


# what a row holds of its action besides the copied fields; the rest (duration, day, ...) is derived
_ACTION_FIELDS_OF_ROW = _COPIED_FIELDS + ("start_epoch_ms", "end_epoch_ms", "target_type")


def action_of_row(row: dict) -> UserAction:
    """The scrubbed action a row was built from, as far as the row holds it (session_id is the one
    the row got): enriched again, it gives the same row, but for the audit of what scrubbing took
    out (nothing is left to take)."""
    action = UserAction(schema_version=SCHEMA_VERSION, **{name: row[name] for name in _ACTION_FIELDS_OF_ROW})
    action.properties.update(row["properties"])
    return action


def rows_of(columns: Columns) -> list[dict]:
    """The same rows, one dict each."""
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


_PROFILE_COLUMNS = ("user_email", "user_title", "user_team", "ab_flags")


def _profile_values(profile: dict) -> tuple:
    """A profile's values for `_PROFILE_COLUMNS`."""
    return (profile.get("email") or "", profile.get("title") or "", profile.get("team") or "",
            profile.get("ab_flags") or {})


def join_profiles(columns: Columns, profiles) -> Columns:
    """Copy each user's profile (already scrubbed) onto their rows, the Amplitude seed's user
    properties; `profiles` maps (stored) user -> profile dict."""
    targets = [columns[name] for name in _PROFILE_COLUMNS]
    for index, profile in enumerate(map(profiles.get, columns["user"])):
        if profile:
            for column, value in zip(targets, _profile_values(profile)):
                column[index] = value
    return columns


def session_for(user: str, ts: int, session_id: str, open_sessions: dict[str, tuple[str, int, int]]) -> str:
    """Keep the producer's session id; else continue the user's open session, or start one after 30 min idle.

    `open_sessions` maps user -> (session_id, first event ms, last event ms) and is updated here. A
    late event from well before the open session starts a session of its own rather than joining a
    later one. A derived id is a hash of the user and the session's first event time, so a replay
    derives the same ids.
    """
    current = open_sessions.get(user)
    if session_id:
        same = current is not None and current[0] == session_id
        open_sessions[user] = (session_id, min(current[1], ts), max(current[2], ts)) if same else (session_id, ts, ts)
        return session_id
    if current is not None:
        open_id, first, last = current
        if first - SESSION_GAP_MS <= ts <= last + SESSION_GAP_MS:
            open_sessions[user] = (open_id, min(first, ts), max(last, ts))
            return open_id
        if ts < first:  # late, from well before the open session: a session of its own; the open one stays
            return _derived_session_id(user, ts)
    session_id = _derived_session_id(user, ts)
    open_sessions[user] = (session_id, ts, ts)
    return session_id


def _derived_session_id(user: str, first_ms: int) -> str:
    return "s_" + hashlib.blake2b(f"{user}|{first_ms}".encode(), digest_size=8).hexdigest()


def close_sessions(open_sessions: dict[str, tuple[str, int, int]], quiet_since_ms: int) -> None:
    """Forget the open sessions whose last event is before `quiet_since_ms`: once no accepted event
    can be within 30 minutes of them, the user's next event starts a new session anyway."""
    for user in [user for user, (_, _, last) in open_sessions.items() if last < quiet_since_ms]:
        del open_sessions[user]


def assign_sessions(columns: Columns, open_sessions: dict[str, tuple[str, int, int]]) -> Columns:
    """Each row's session (`session_for`), in order."""
    columns["session_id"] = list(map(session_for, columns["user"], columns["ts"], columns["session_id"],
                                     itertools.repeat(open_sessions)))
    return columns
