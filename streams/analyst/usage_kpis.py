"""The usage-analysis KPIs behind the dashboard's pages (PostHog/Amplitude trends, Datagrok's
Usage Analysis): every one is also a `tally report`, so a figure on a page and in a terminal
come from the same SQL. Common filters (app, dates, role, team, A/B flag) as in kpi_model.
"""
from __future__ import annotations

from streams.analyst.kpi_model import IN_APP, IN_FILTERS, IN_PEOPLE, Chart, Kpi, Param

PIPELINE_FILTERS = ("app", "since", "until")  # what the pipeline did has no people to filter by
ROLLING_DAYS = {"dau": 1, "wau": 7, "mau": 28}  # the live tables' windows (streams/stages/active_users.py)


def _limit(default: int) -> dict[str, Param]:
    return {"limit": Param("UInt32", default, "rows to show")}


def _text(help_text: str, default: str = "") -> Param:
    return Param("String", default, help_text)


# A point of a trend, broken down by one dimension of the event or of the person's latest profile.
_BREAKDOWN = """multiIf({breakdown:String} = 'app', toString(app),
                        {breakdown:String} = 'role', profile.title,
                        {breakdown:String} = 'team', profile.team,
                        {breakdown:String} = 'event_name', toString(event_name),
                        startsWith({breakdown:String}, 'flag:'), profile.ab_flags[substring({breakdown:String}, 6)],
                        'all')"""
_BREAKDOWN_HELP = "split by app, role, team, event_name or flag:NAME ('' = no split)"

USAGE_KPIS = [
    Kpi("active_users",
        "Rolling active users per day, as the live tables count them: DAU, WAU (7 days), MAU (28 days), "
        "and stickiness (DAU as a % of MAU)",
        f"""SELECT addDays(ds, back) AS day, uniqExactIf(user, back < {ROLLING_DAYS['dau']}) AS dau,
                   uniqExactIf(user, back < {ROLLING_DAYS['wau']}) AS wau, uniqExact(user) AS mau,
                   dau * 100 / mau AS stickiness_percent
            FROM (SELECT DISTINCT user, ds FROM user_actions
                  WHERE {IN_APP} AND {IN_PEOPLE}
                    AND addDays(ds, {ROLLING_DAYS['mau'] - 1}) >= {{since:Date}} AND ds <= {{until:Date}})
            ARRAY JOIN range({ROLLING_DAYS['mau']}) AS back
            WHERE day BETWEEN {{since:Date}} AND {{until:Date}}
            GROUP BY day
            ORDER BY day""",
        Chart("day", "dau", more_y=("wau", "mau"))),
    Kpi("new_returning",
        "Users per day who were new (their first day in the app, or in any app with no --app) or returning",
        f"""SELECT ds, uniqExactIf(user, ds = first_ds) AS new_users, uniqExactIf(user, ds > first_ds) AS returning_users
            FROM (SELECT DISTINCT user, ds FROM user_actions WHERE {IN_FILTERS}) AS days
            INNER JOIN (SELECT user, min(ds) AS first_ds FROM user_actions WHERE {IN_APP} GROUP BY user) AS firsts
                USING (user)
            GROUP BY ds
            ORDER BY ds""",
        Chart("ds", "new_users", "bar", more_y=("returning_users",), stacked=True)),
    Kpi("events_per_day", "Events and active users per day",
        f"""SELECT ds, count() AS events, uniqExact(user) AS users, countIf(is_error) AS errors
            FROM kpi_actions WHERE {IN_FILTERS}
            GROUP BY ds
            ORDER BY ds""",
        Chart("ds", "events", "bar")),
    Kpi("trend",
        "One command or event name (or all), counted as events or unique users, per day or week, "
        "split by --breakdown",
        f"""SELECT if({{interval:String}} = 'week', toMonday(ds), ds) AS period,
                   addDays(period, if({{interval:String}} = 'week', 6, 0)) AS period_end, {_BREAKDOWN} AS breakdown_value,
                   if({{measure:String}} = 'users', uniqExact(user), count()) AS value,
                   toUInt8(period < {{since:Date}} OR period_end > {{until:Date}}) AS partial
            FROM kpi_actions LEFT JOIN kpi_profiles AS profile USING (user)
            WHERE {IN_FILTERS}
              AND ({{event:String}} = '' OR command = {{event:String}} OR event_name = {{event:String}})
            GROUP BY period, period_end, breakdown_value
            ORDER BY period, breakdown_value""",
        Chart("period", "value", series="breakdown_value"),
        {"event": _text("a command or event name ('' = every event)"),
         "measure": Param("String", "events", "count events or unique users", ("events", "users")),
         "interval": Param("String", "day", "one point per day or per week", ("day", "week")),
         "breakdown": _text(_BREAKDOWN_HELP)}),
    Kpi("apps", "Each app: users, events, commands, errors and its first and last day",
        f"""SELECT app, uniqExact(user) AS users, count() AS events, uniqExact(command) AS commands,
                   countIf(is_error) AS errors, errors * 100 / events AS error_rate_percent,
                   min(ds) AS first_day, max(ds) AS last_day
            FROM kpi_actions WHERE {IN_FILTERS}
            GROUP BY app
            ORDER BY events DESC, app""",
        Chart("users", "events", "scatter", label="app")),
    Kpi("recent_events",
        "The latest events, with their (scrubbed) arguments and outputs; narrowed by --command, --user, "
        "--resource, --errors_only",
        f"""SELECT ts, app, user, command, event_name, duration_ms, target_type, resource_key,
                   error_message, pos_args_json, keyword_args_json, output, scrubbed_fields
            FROM kpi_actions
            WHERE {IN_FILTERS}
              AND ({{command:String}} = '' OR command = {{command:String}} OR event_name = {{command:String}})
              AND ({{user:String}} = '' OR user = {{user:String}})
              AND ({{resource:String}} = '' OR resource_key = {{resource:String}})
              AND ({{errors_only:UInt8}} = 0 OR is_error)
              AND ({{error:String}} = '' OR error_message = {{error:String}})
            ORDER BY ts DESC, event_id
            LIMIT {{limit:UInt32}}""",
        Chart("ts", "duration_ms", "bar"),
        {"command": _text("a command or event name ('' = any)"), "user": _text("a user ('' = anyone)"),
         "resource": _text("a resource key ('' = any)"),
         "errors_only": Param("UInt8", 0, "1 = only failed actions"),
         "error": _text("only this error message ('' = any)"), **_limit(50)}),
    Kpi("resource_activity", "Every action on one --resource (a table, a dashboard, a repository): who, what, when",
        f"""SELECT ts, user, app, command, event_name, target_type, duration_ms, error_message
            FROM kpi_actions
            WHERE {IN_FILTERS} AND resource_key = {{resource:String}}
            ORDER BY ts DESC, event_id
            LIMIT {{limit:UInt32}}""",
        Chart("ts", "duration_ms", "bar"),
        {"resource": Param("String", None, "the resource key (e.g. hive://gold.core/orders)"), **_limit(200)}),
    Kpi("resource_users", "The most active users of one --resource",
        f"""SELECT user, count() AS events, uniqExact(command) AS commands, min(ts) AS first_seen, max(ts) AS last_seen
            FROM kpi_actions
            WHERE {IN_FILTERS} AND resource_key = {{resource:String}}
            GROUP BY user
            ORDER BY events DESC, user
            LIMIT {{limit:UInt32}}""",
        Chart("user", "events", "bar"),
        {"resource": Param("String", None, "the resource key"), **_limit(20)}),
    Kpi("resources", "Resources (tables, dashboards, repositories, ...) by actions and users",
        f"""SELECT resource_key, any(target_type) AS target_type, count() AS events, uniqExact(user) AS users,
                   max(ts) AS last_seen
            FROM kpi_actions
            WHERE {IN_FILTERS} AND resource_key != ''
            GROUP BY resource_key
            ORDER BY events DESC, resource_key
            LIMIT {{limit:UInt32}}""",
        Chart("resource_key", "events", "bar"), _limit(30)),
    Kpi("retention_cohorts",
        "Weekly cohorts by each user's first active week: % of the cohort active N weeks later",
        f"""WITH weeks AS (SELECT DISTINCT user, toMonday(ds) AS week FROM user_actions
                           WHERE {IN_APP} AND {IN_PEOPLE} AND ds <= {{until:Date}}),
                 firsts AS (SELECT user, min(week) AS cohort_week FROM weeks GROUP BY user),
                 sizes AS (SELECT cohort_week, count() AS cohort_users FROM firsts GROUP BY cohort_week)
            SELECT cohort_week, toUInt32(dateDiff('week', cohort_week, week)) AS weeks_later,
                   count() AS users, any(sizes.cohort_users) AS cohort_users,
                   users * 100 / cohort_users AS retained_percent
            FROM weeks INNER JOIN firsts USING (user) INNER JOIN sizes USING (cohort_week)
            WHERE cohort_week >= toMonday({{since:Date}})
            GROUP BY cohort_week, weeks_later
            ORDER BY cohort_week, weeks_later""",
        Chart("weeks_later", "cohort_week", "heatmap", z="retained_percent")),
    Kpi("filter_values", "The values the common filters can take: apps, roles, teams, A/B flags",
        """SELECT filter, value, events FROM (
               SELECT 'app' AS filter, toString(app) AS value, count() AS events FROM kpi_actions GROUP BY value
               UNION ALL
               SELECT 'role', title, count() FROM kpi_profiles WHERE title != '' GROUP BY title
               UNION ALL
               SELECT 'team', team, count() FROM kpi_profiles WHERE team != '' GROUP BY team
               UNION ALL
               SELECT 'ab', concat(flag.1, '=', flag.2) AS value, count() FROM kpi_profiles
               ARRAY JOIN CAST(ab_flags, 'Array(Tuple(String, String))') AS flag GROUP BY value)
           ORDER BY filter, value""",
        Chart("value", "events", "bar", series="filter"), filters=()),
    Kpi("stored_per_day", "Events stored per day of arrival (ingested_at), and their event days' span",
        """SELECT toDate(ingested_at) AS day, count() AS stored, min(ds) AS earliest_event_day,
                  max(ds) AS latest_event_day
           FROM user_actions FINAL
           WHERE """ + IN_APP + """ AND toDate(ingested_at) BETWEEN {since:Date} AND {until:Date}
           GROUP BY day
           ORDER BY day""",
        Chart("day", "stored", "bar"), filters=PIPELINE_FILTERS),
    Kpi("dead_letters", "Dead letters by reason: how many, first and last received, the latest one's detail",
        """SELECT reason, count() AS letters, min(received_at) AS first_received, max(received_at) AS last_received,
                  argMax(detail, received_at) AS latest_detail
           FROM dead_letters FINAL
           WHERE """ + IN_APP + """ AND toDate(received_at) BETWEEN {since:Date} AND {until:Date}
           GROUP BY reason
           ORDER BY letters DESC, reason""",
        Chart("reason", "letters", "bar"), filters=PIPELINE_FILTERS),
    Kpi("recent_dead_letters", "The latest dead letters of one --reason (or all): detail, source offset, "
                               "scrubbed payload",
        """SELECT received_at, reason, detail, source_partition, source_offset, payload_size, app, user,
                  substring(scrubbed_payload, 1, 2000) AS scrubbed_payload
           FROM dead_letters FINAL
           WHERE """ + IN_APP + """ AND toDate(received_at) BETWEEN {since:Date} AND {until:Date}
             AND ({reason:String} = '' OR reason = {reason:String})
           ORDER BY received_at DESC, source_partition, source_offset
           LIMIT {limit:UInt32}""",
        Chart("received_at", "payload_size", "bar"),
        {"reason": _text("a dead-letter reason ('' = all)"), **_limit(50)}, filters=PIPELINE_FILTERS),
]
