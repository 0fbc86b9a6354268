"""The dashboard's pages: which KPIs each shows, with which inputs, and where a click drills down.

A page is data, not code: panels name a KPI (streams/analyst/kpis.py, usage_kpis.py) and how
its parameters come from the page's filters and inputs, so every figure on a page is the figure
`tally report` prints for the same filters. `build_page` runs the panels and returns JSON.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from streams.analyst import charts, kpis, significance
from streams.analyst.kpi_model import COMMON_PARAMS, Chart, KpiError

DEFAULT_DAYS = 28  # the range a page opens on: the last four weeks up to today


@dataclass(frozen=True)
class Drill:
    """A link from a clicked row: `set` maps the URL parameters of `page` to `{column}` templates."""
    label: str
    page: str
    set: dict[str, str]


@dataclass(frozen=True)
class Panel:
    id: str
    kpi: str
    title: str
    params: dict[str, str] = field(default_factory=dict)  # KPI parameter -> "$input" or a fixed value
    chart: Chart | None = None      # instead of the KPI's own chart
    show: str = "both"              # "chart", "table" or "both"
    drill: tuple[Drill, ...] = ()
    needs: tuple[str, ...] = ()     # inputs that must be set, else the panel says what to choose


@dataclass(frozen=True)
class Input:
    name: str
    label: str
    default: str = ""
    choices: tuple[str, ...] = ()   # a select; "" is offered as "(all)" when it is one of them
    help: str = ""


@dataclass(frozen=True)
class Page:
    name: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    inputs: tuple[Input, ...] = ()


_DAY = {"since": "{day}", "until": "{day}"}
_FUNCTIONS_OF_APP = Drill("Functions of {app}", "functions", {"app": "{app}"})

PAGES = (
    Page("overview", "Overview", "Active users per day as the live tables count them (rolling windows), who is new, "
                                 "and how much happens",
         (Panel("active_users", "active_users", "DAU, WAU (7 days) and MAU (28 days)",
                drill=(Drill("Functions on {day}", "functions", _DAY),
                       Drill("Trend of events on {day}", "trends", _DAY))),
          Panel("stickiness", "active_users", "Stickiness: DAU as a % of MAU",
                chart=Chart("day", "stickiness_percent"), show="chart"),
          Panel("new_returning", "new_returning", "New and returning users",
                drill=(Drill("Users active on {ds}", "users", {"since": "{ds}", "until": "{ds}"}),)),
          Panel("events_per_day", "events_per_day", "Events per day",
                drill=(Drill("Functions on {ds}", "functions", {"since": "{ds}", "until": "{ds}"}),
                       Drill("Errors on {ds}", "errors", {"since": "{ds}", "until": "{ds}"}))),
          Panel("apps", "apps", "Apps", show="table", drill=(_FUNCTIONS_OF_APP,)))),
    Page("trends", "Trends", "Any command or event name, counted as events or unique users, per day or week",
         (Panel("trend", "trend", "Trend",
                params={"event": "$event", "measure": "$measure", "interval": "$interval", "breakdown": "$breakdown"},
                drill=(Drill("Functions in {period} – {period_end}", "functions",
                             {"since": "{period}", "until": "{period_end}"}),)),),
         (Input("event", "Command or event", help="e.g. search_table or Search Submitted; empty = every event"),
          Input("measure", "Count", "events", ("events", "users")),
          Input("interval", "Per", "day", ("day", "week")),
          Input("breakdown", "Split by", "", ("", "app", "role", "team", "event_name")))),
    Page("apps", "Apps", "Each app by its users and events; click one for its functions",
         (Panel("apps", "apps", "Apps by users and events", drill=(_FUNCTIONS_OF_APP,)),
          Panel("apps_trend", "trend", "Users per app and day", params={"measure": "users", "breakdown": "app"},
                show="chart", drill=(Drill("Functions of {breakdown_value} on {period}", "functions",
                                           {"app": "{breakdown_value}", "since": "{period}", "until": "{period}"}),)))),
    Page("functions", "Functions", "Calls, users, duration percentiles and error rate per command; "
                                   "click one for its recent events",
         (Panel("command_usage", "command_usage", "Functions by users and calls",
                chart=Chart("users", "calls", "scatter", label="command"), params={"limit": "500"},
                drill=(Drill("Recent events of {command}", "functions", {"command": "{command}", "app": "{app}"}),
                       Drill("Trend of {command}", "trends", {"event": "{command}", "app": "{app}"}))),
          Panel("recent_events", "recent_events", "Recent events of the chosen command", show="table",
                params={"command": "$command"}, needs=("command",),
                drill=(Drill("Activity of {user}", "users", {"user": "{user}"}),
                       Drill("Actions on {resource_key}", "objects", {"resource": "{resource_key}"})))),
         (Input("command", "Command", help="click a function, or type a command or event name"),)),
    Page("objects", "Objects", "Every action on one resource (a table, a dashboard, a repository): who, what, when",
         (Panel("resources", "resources", "Resources by actions", show="table", params={"limit": "100"},
                drill=(Drill("Actions on {resource_key}", "objects", {"resource": "{resource_key}"}),)),
          Panel("resource_activity", "resource_activity", "Actions on the chosen resource", show="table",
                params={"resource": "$resource"}, needs=("resource",),
                drill=(Drill("Activity of {user}", "users", {"user": "{user}"}),)),
          Panel("resource_users", "resource_users", "Its most active users",
                params={"resource": "$resource"}, needs=("resource",),
                drill=(Drill("Activity of {user}", "users", {"user": "{user}"}),))),
         (Input("resource", "Resource key", help="click one, or type its key"),)),
    Page("errors", "Errors", "Top errors by count and users, first and last seen; click one for its events",
         (Panel("errors", "errors", "Top errors", params={"limit": "50"},
                drill=(Drill("Events with this error", "errors", {"error": "{error_message}", "command": "{command}"}),
                       Drill("Function {command}", "functions", {"command": "{command}"}))),
          Panel("error_events", "recent_events", "Recent failed events", show="table",
                params={"errors_only": "1", "error": "$error", "command": "$command"},
                drill=(Drill("Activity of {user}", "users", {"user": "{user}"}),))),
         (Input("error", "Error message", help="click an error, or leave empty for every failure"),
          Input("command", "Command"))),
    Page("users", "Users", "Per-person activity, by pseudonym; an email typed here is looked up with the "
                           "deployment's key",
         (Panel("top_users", "top_users", "Most active users", show="table",
                drill=(Drill("Activity of {user}", "users", {"user": "{user}"}),)),
          Panel("user_stats", "user_stats", "What the chosen user did (30 days up to the range's end)",
                params={"user": "$user"}, needs=("user",),
                drill=(Drill("Function {command}", "functions", {"command": "{command}"}),)),
          Panel("user_events", "recent_events", "The chosen user's recent events", show="table",
                params={"user": "$user"}, needs=("user",),
                drill=(Drill("Actions on {resource_key}", "objects", {"resource": "{resource_key}"}),))),
         (Input("user", "User (pseudonym or email)"),)),
    Page("retention", "Retention", "Weekly cohorts by first active week, and week-over-week return per A/B variant",
         (Panel("retention_cohorts", "retention_cohorts", "Cohorts: % active N weeks after their first week"),
          Panel("retention", "retention", "Came back in week N+k", params={"weeks": "$weeks", "flag": "$flag"})),
         (Input("weeks", "k (weeks later)", "1"), Input("flag", "Split by A/B flag"))),
    Page("funnels", "Funnels", "Users reaching each step in order, per A/B variant, with a two-proportion z-test",
         (Panel("funnel", "funnel", "Funnel",
                params={"step1": "$step1", "step2": "$step2", "step3": "$step3", "flag": "$flag"}),),
         (Input("step1", "Step 1", "search_table"), Input("step2", "Step 2", "_get_table_metadata"),
          Input("step3", "Step 3"), Input("flag", "Split by A/B flag"))),
    Page("search", "Search", "What people search for, and how often they click a top result",
         (Panel("top_search_terms", "top_search_terms", "Top search terms"),
          Panel("search_ctr", "search_ctr", "Click-through: % of result clicks on the top 3",
                drill=(Drill("Functions on {ds}", "functions", {"since": "{ds}", "until": "{ds}"}),)))),
    Page("pipeline", "Pipeline", "What came in, what was stored, what was refused and why",
         (Panel("stored_per_day", "stored_per_day", "Events stored per day of arrival"),
          Panel("dead_letters", "dead_letters", "Dead letters by reason",
                drill=(Drill("Dead letters: {reason}", "pipeline", {"reason": "{reason}"}),)),
          Panel("recent_dead_letters", "recent_dead_letters", "Recent dead letters", show="table",
                params={"reason": "$reason"})),
         (Input("reason", "Dead-letter reason"),)),
)
PAGE_BY_NAME = {page.name: page for page in PAGES}
FILTERS = tuple(COMMON_PARAMS)


def default_filters(today: dt.date) -> dict[str, str]:
    return {"since": (today - dt.timedelta(days=DEFAULT_DAYS - 1)).isoformat(), "until": today.isoformat(),
            "app": "", "role": "", "team": "", "ab": ""}


def json_cell(value):
    """A cell as JSON: ISO dates and times (milliseconds), lists kept, everything else as is."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [json_cell(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def panel_params(panel: Panel, kpi, filters: dict, inputs: dict) -> dict:
    """The KPI's parameters: the common filters it takes, then the panel's own (from the inputs)."""
    params = {name: filters[name] for name in kpi.filters if filters.get(name)}
    for name, source in panel.params.items():
        value = inputs.get(source[1:], "") if source.startswith("$") else source
        if value != "":
            params[name] = value
    return params


class _SameQueryOnce:
    """A page's panels over one target: two panels of one KPI with the same parameters run it once."""

    def __init__(self, target) -> None:
        self._target, self._answers = target, {}

    def query(self, sql, parameters=None):
        key = (sql, tuple(sorted((parameters or {}).items())))
        if key not in self._answers:
            self._answers[key] = self._target.query(sql, parameters)
        return self._answers[key]


def run_panel(target, panel: Panel, filters: dict, inputs: dict, today: dt.date, bind_people=None) -> dict:
    kpi = kpis.get_kpi(panel.kpi)
    answer = {"id": panel.id, "kpi": kpi.name, "title": panel.title, "description": kpi.description,
              "show": panel.show, "drill": [{"label": d.label, "page": d.page, "set": d.set} for d in panel.drill],
              "ignored_filters": [name for name in FILTERS if filters.get(name) and name not in kpi.filters]}
    missing = [name for name in panel.needs if not inputs.get(name)]
    if missing:
        answer["note"] = f"choose {' and '.join(missing)} (click a row above, or type it in the bar)"
        return answer
    try:
        params = kpis.bind_params(kpi, panel_params(panel, kpi, filters, inputs), today=today)
        if bind_people is not None:
            params, notes = bind_people(params)
            answer["notes"] = notes
        columns, rows = target.query(kpi.sql, params)
    except KpiError as exc:
        answer["error"] = str(exc)
        return answer
    answer.update(columns=list(columns), rows=[[json_cell(v) for v in row] for row in rows],
                  params={k: json_cell(v) for k, v in params.items()})
    if panel.show != "table" and rows:
        answer["figure"] = charts.figure(list(columns), rows, panel.chart or kpi.chart)
    if kpi.name == "funnel":
        answer["tests"] = significance.funnel_tests(list(columns), rows)
    return answer


def active_totals(panel: dict) -> list[dict]:
    """The Overview's headline numbers: DAU/WAU/MAU and stickiness on the range's last day with events
    (a range up to today would otherwise open on a day that has barely begun)."""
    columns = panel.get("columns") or []
    rows = [dict(zip(columns, row)) for row in panel.get("rows") or []]
    active = [row for row in rows if row["dau"]]
    if not active:
        return []
    last = active[-1]
    return [{"id": name, "label": label, "value": last[name], "note": f"on {last['day']}, the last day with events"}
            for name, label in (("dau", "DAU"), ("wau", "WAU"), ("mau", "MAU"),
                                ("stickiness_percent", "Stickiness %"))]


def build_page(target, name: str, query: dict[str, str], today: dt.date, bind_people=None) -> dict:
    """The page's panels run against `target` with the filters and inputs in `query` (the URL's)."""
    if name not in PAGE_BY_NAME:
        raise KpiError(f"no page {name!r}; the pages are {', '.join(PAGE_BY_NAME)}")
    page = PAGE_BY_NAME[name]
    filters = {**default_filters(today), **{k: query[k] for k in FILTERS if k in query}}
    inputs = {i.name: query.get(i.name, i.default) for i in page.inputs}
    once = _SameQueryOnce(target)
    panels = [run_panel(once, panel, filters, inputs, today, bind_people) for panel in page.panels]
    answer = {"page": page.name, "title": page.title, "description": page.description, "filters": filters,
              "inputs": [{"name": i.name, "label": i.label, "value": inputs[i.name], "choices": list(i.choices),
                          "help": i.help} for i in page.inputs],
              "panels": panels}
    if page.name == "overview":
        answer["tiles"] = active_totals(panels[0])
    return answer


def meta(target) -> dict:
    """The pages and the values the filters can take (for the selects)."""
    kpi = kpis.get_kpi("filter_values")
    _, rows = target.query(kpi.sql, kpis.bind_params(kpi, {}))
    values: dict[str, list[str]] = {}
    for filter_name, value, _ in rows:
        values.setdefault(filter_name, []).append(value)
    flags = sorted({value.split("=", 1)[0] for value in values.get("ab", [])})
    return {"pages": [{"name": p.name, "title": p.title} for p in PAGES], "values": values,
            "breakdowns": ["", "app", "role", "team", "event_name", *(f"flag:{f}" for f in flags)], "flags": flags}


def dumps(answer: dict) -> bytes:
    return json.dumps(answer, default=json_cell, ensure_ascii=False).encode()
