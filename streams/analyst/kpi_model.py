"""What a KPI is: parameterised SQL with a chart spec, and how its parameters are bound.

The definitions themselves live in streams/analyst/kpis.py (the seeds' reports) and
streams/analyst/usage_kpis.py (the dashboard's views); `tally report`, the dashboard and the
tests all run the same SQL through `bind_params`.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

EARLIEST = dt.date(1970, 1, 1)  # ClickHouse's first Date: "since the beginning"


@dataclass(frozen=True)
class Chart:
    x: str
    y: str
    kind: str = "line"           # "line", "bar", "scatter" (x and y both numbers) or "heatmap" (z over x, y)
    series: str | None = None    # a column splitting the rows into one line/bar group each
    more_y: tuple[str, ...] = ()  # further columns drawn next to y (one trace each)
    z: str | None = None         # the heatmap's value
    label: str | None = None     # the scatter's point names
    stacked: bool = False        # bars stacked rather than side by side


@dataclass(frozen=True)
class Param:
    type: str                    # the ClickHouse type in the SQL placeholder: String, Date, UInt32
    default: object = None       # None = required
    help: str = ""
    choices: tuple[str, ...] = ()  # the only values a String takes, when it is one of a few


# The common filters: the dashboard's global ones, `tally report`'s common flags. A KPI takes all
# of them unless it says otherwise (a pipeline figure has no people to filter).
COMMON_PARAMS = {
    "app": Param("String", "", "only this app ('' = all apps)"),
    "since": Param("Date", EARLIEST, "first day (YYYY-MM-DD)"),
    "until": Param("Date", "today", "last day (YYYY-MM-DD), default today (UTC)"),
    "role": Param("String", "", "only people of this role (their profile's title; '' = everyone)"),
    "team": Param("String", "", "only people of this team ('' = everyone)"),
    "ab": Param("String", "", "only people with this A/B flag value, as FLAG=VARIANT ('' = everyone)"),
}


@dataclass(frozen=True)
class Kpi:
    name: str
    description: str
    sql: str
    chart: Chart
    params: dict[str, Param] = field(default_factory=dict)  # beyond the common filters
    filters: tuple[str, ...] = tuple(COMMON_PARAMS)         # the common filters it takes


# Filters shared by the queries over per-event views.
IN_APP = "({app:String} = '' OR app = {app:String})"
IN_RANGE = "ds BETWEEN {since:Date} AND {until:Date}"
# People by their latest profile (not the one joined when the event arrived), so the answer is
# the same however late the profile or the events came.
IN_PEOPLE = """({role:String} = '' AND {team:String} = '' AND {ab:String} = ''
    OR user IN (SELECT user FROM kpi_profiles
                WHERE ({role:String} = '' OR title = {role:String})
                  AND ({team:String} = '' OR team = {team:String})
                  AND ({ab:String} = ''
                       OR ab_flags[substring({ab:String}, 1, position({ab:String}, '=') - 1)]
                          = substring({ab:String}, position({ab:String}, '=') + 1))))"""
IN_FILTERS = f"{IN_APP} AND {IN_RANGE} AND {IN_PEOPLE}"


class KpiError(ValueError):
    """A KPI name or parameter the user got wrong; the message says how to fix it."""


def all_params(kpi: Kpi) -> dict[str, Param]:
    return {**{name: COMMON_PARAMS[name] for name in kpi.filters}, **kpi.params}


def _coerce(name: str, param: Param, value, today: dt.date):
    if value == "today" and param.type == "Date":
        return today
    try:
        if param.type == "Date":
            return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
        if param.type.startswith("UInt"):
            number = int(value)
            if number < 0:
                raise ValueError
            return number
    except ValueError:
        kind = "a date YYYY-MM-DD" if param.type == "Date" else "a whole number >= 0"
        raise KpiError(f"--{name} must be {kind}, not {value!r}") from None
    text = str(value)
    if param.choices and text not in param.choices:
        raise KpiError(f"--{name} must be one of {', '.join(repr(c) for c in param.choices)}, not {text!r}")
    if name == "ab" and text and "=" not in text:
        raise KpiError(f"--ab takes FLAG=VARIANT (e.g. new_search_ui=true), not {text!r}")
    return text


def bind_params(kpi: Kpi, given: dict, today: dt.date | None = None) -> dict:
    """The query parameters for `kpi`: defaults filled in, values typed; None in `given` = not set."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    declared = all_params(kpi)
    unknown = sorted(name for name, value in given.items() if value is not None and name not in declared)
    if unknown:
        raise KpiError(f"{kpi.name} does not take {', '.join('--' + n for n in unknown)}; "
                       f"it takes {', '.join('--' + n for n in declared)}")
    bound = {}
    for name, param in declared.items():
        value = given.get(name)
        if value is None:
            value = param.default
        if value is None:
            raise KpiError(f"{kpi.name} needs --{name} ({param.help})")
        bound[name] = _coerce(name, param, value, today)
    since, until = bound.get("since"), bound.get("until")
    if isinstance(since, dt.date) and isinstance(until, dt.date) and since > until:
        raise KpiError(f"--since {since} is after --until {until}: no day is in between")
    return bound
