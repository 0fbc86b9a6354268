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
    _shape_plans: dict = field(default_factory=dict, compare=False, repr=False)

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
    """The columns the plan's sources give one row: looks up only the keys the action has (a handful)
    rather than every source of every column. `extract_columns` does a batch; this is its row by row
    case, for a row whose first source has no value."""
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
        found["result_index"] = _as_result_index(found["result_index"])
    return found


def _take_present(present: dict, feeds: dict, best: dict) -> None:
    for key in present.keys() & feeds.keys():
        value = present[key]
        if value is None or value == "":
            continue
        for rank, column in feeds[key]:
            if column not in best or rank < best[column][0]:
                best[column] = (rank, value)


# ---- property extraction over a batch, shape by shape ----------------------------------------

# A batch repeats a few argument and property key sets (the signatures of the functions tracked):
# rows of one shape take each KPI column from the same first sources, read in C over the group.
_SHAPE_PLANS_CACHED = 10_000
_ONLY_TEXT = {str}


def _shape_plan(plan: _LookupPlan, kwarg_keys: tuple, property_keys: tuple) -> dict[str, tuple]:
    """Per column, its sources in rank order that rows of this shape can have a value from: a key
    absent from the shape is skipped; fields, positional arguments and nested keys stay."""
    present_kwargs, present_properties = set(kwarg_keys), set(property_keys)
    by_column: dict[str, list] = {}
    for key, feeds in plan.by_kwarg.items():
        if key in present_kwargs:
            for rank, column in feeds:
                by_column.setdefault(column, []).append((rank, "kwargs", (key,)))
    for key, feeds in plan.by_property.items():
        if key in present_properties:
            for rank, column in feeds:
                by_column.setdefault(column, []).append((rank, "props", (key,)))
    for rank, column, kind, path in plan.others:
        if kind != "kwargs" or path[0] in present_kwargs:
            by_column.setdefault(column, []).append((rank, kind, path))
    return {column: tuple((kind, path) for _, kind, path in sorted(sources))
            for column, sources in by_column.items()}


def _first_values(kind: str, path: tuple, rows: list[int], actions: list[UserAction], fields: dict[str, list],
                  kwargs: list[dict], properties: list[dict]) -> list:
    """The values of one source for the rows of a group, in C where the source is a plain key or field."""
    if kind == "kwargs" and len(path) == 1:
        return list(map(operator.itemgetter(path[0]), map(kwargs.__getitem__, rows)))
    if kind == "props":
        return list(map(operator.itemgetter(path[0]), map(properties.__getitem__, rows)))
    if kind == "field":
        read = fields.get(path[0])
        return (list(map(read.__getitem__, rows)) if read is not None else
                list(map(operator.attrgetter(path[0]), map(actions.__getitem__, rows))))
    return [None] * len(rows)  # positional arguments and nested keys: the rows' own lookup decides


class _FieldsOfRow:
    """A row's fields as attributes, read off the columns (an action is parsed only for a field
    they lack)."""
    __slots__ = ("fields", "actions", "row")

    def __init__(self, fields: dict[str, list], actions: list[UserAction], row: int) -> None:
        self.fields, self.actions, self.row = fields, actions, row

    def __getattr__(self, name: str):
        column = self.fields.get(name)
        return column[self.row] if column is not None else getattr(self.actions[self.row], name)


def extract_columns(mapping: PropertyMapping, fields: dict[str, list], actions: list[UserAction], kwargs: list[dict],
                    pos_args: list[list], properties: list[dict]) -> dict[str, list]:
    """The KPI columns of a batch: for each row, what `_extract` gives it ("" or None where nothing),
    worked out once per shape (app, argument keys, property keys) and read in C over its rows.
    Only a row whose first source is empty, or a positional or nested one, is looked up on its own."""
    columns = {column: [None if column == "result_index" else ""] * len(actions) for column in KPI_COLUMNS}
    groups: dict[tuple, list[int]] = {}
    for index, shape in enumerate(zip(fields["app"], map(tuple, kwargs), map(tuple, properties))):
        group = groups.get(shape)
        if group is None:
            groups[shape] = [index]
        else:
            group.append(index)
    plans = mapping._shape_plans
    for shape, rows in groups.items():
        plan = mapping.lookup_plan(shape[0])
        shape_plan = plans.get(shape)
        if shape_plan is None:
            if len(plans) > _SHAPE_PLANS_CACHED:
                plans.clear()
            shape_plan = plans[shape] = _shape_plan(plan, shape[1], shape[2])
        for column, sources in shape_plan.items():
            kind, path = sources[0]
            values = _first_values(kind, path, rows, actions, fields, kwargs, properties)
            if (len(sources) > 1 or kind == "args" or len(path) > 1) and (None in values or "" in values):
                for at, (row, value) in enumerate(zip(rows, values)):
                    if value is None or value == "":
                        values[at] = _extract(plan, _FieldsOfRow(fields, actions, row), kwargs[row], pos_args[row],
                                              properties[row]).get(column)
            if column == "result_index":
                values = _as_result_indexes(values)
            elif set(map(type, values)) != _ONLY_TEXT:
                values = ["" if value is None else value if type(value) is str else str(value) for value in values]
            any(map(columns[column].__setitem__, rows, values))  # scattered back in C (each call is None)
    return columns


def _as_result_indexes(values: list) -> list[int | None]:
    """`_as_result_index` of each value, each distinct one once (an argument can be a list or a dict:
    then one by one)."""
    try:
        distinct = {value: _as_result_index(value) for value in set(values)}
    except TypeError:  # unhashable
        return list(map(_as_result_index, values))
    return list(map(distinct.__getitem__, values))


def _as_result_index(value) -> int | None:
    """A value for the Nullable(Int32) column: None when it is not a whole number in range."""
    if value is None or value == "":
        return None
    try:
        index = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return index if _INT32_MIN <= index <= _INT32_MAX else None


# ---- the rows, column by column ----------------------------------------------------------

Columns = dict  # column name -> one value per row: how a batch of rows travels to the sink

# The wire fields a row copies as they are.
_COPIED_FIELDS = ("event_id", "app", "command", "user", "host_name", "session_id", "pos_args_json",
                  "keyword_args_json", "output", "error", "target_id", "label", "location", "value")
_read_properties = operator.attrgetter("properties")


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
    properties = fields.get("properties")  # decoded natively as dicts already (envelope_columns)
    if properties is None:
        # dict() of an empty map costs too; a comprehension reads a filled one faster than dict()
        properties = [{key: found[key] for key in found} if found else {} for found in map(_read_properties, actions)]
    extracted = extract_columns(mapping, fields, actions, kwargs, pos_args, properties)
    by_command = {command: mapping.target_type_for(command) for command in set(copied["command"])}
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
        "target_type": [found or by_command[command] for found, command in zip(extracted["target_type"], copied["command"])],
        "properties": properties,
        "search_term": extracted["search_term"],
        "result_index": extracted["result_index"],
        "source": extracted["source"],
        "resource_key": extracted["resource_key"],
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
    users = columns["user"]
    found = {user: _profile_values(profile) for user in set(users) if (profile := profiles.get(user))}
    if found:  # each user's values looked up once; a row without a profile keeps the empty ones
        none = tuple(columns[name][0] for name in _PROFILE_COLUMNS)
        for name, values in zip(_PROFILE_COLUMNS, zip(*map(found.get, users, itertools.repeat(none)))):
            columns[name] = list(values)
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
