"""The named KPIs: the seeds' queries (Amundsen, Elevio, Datagrok, Amplitude) in ClickHouse SQL.

Each KPI is a description, parameterised SQL over the `kpi_*` views (streams/store/sql/002_kpi_views.sql)
and a chart spec. Values are bound server-side (`{since:Date}`), never formatted into the SQL.
Every KPI takes `app` ('' = all apps), `since` and `until`; some take more (threshold, limit, ...).
"""
from __future__ import annotations

from streams.analyst.kpi_model import (  # noqa: F401 (re-exported: the KPI model's names)
    COMMON_PARAMS, EARLIEST, IN_APP, IN_FILTERS, IN_PEOPLE, IN_RANGE, Chart, Kpi, KpiError, Param, all_params,
    bind_params)
from streams.analyst.usage_kpis import USAGE_KPIS


def _command_usage_sql(per: str, extra_columns: str = "") -> str:
    """The Datagrok seed's function usage: calls, durations and errors per command, by `per`."""
    return f"""SELECT {per}, command, event_name, count() AS calls, {extra_columns}
                  quantileExact(0.5)(duration_ms) AS p50_ms, quantileExact(0.95)(duration_ms) AS p95_ms,
                  quantileExact(0.99)(duration_ms) AS p99_ms,
                  countIf(is_error) AS errors, errors * 100 / calls AS error_rate_percent
           FROM kpi_actions
           WHERE {IN_FILTERS}
           GROUP BY {per}, command, event_name
           ORDER BY calls DESC, {per}, command
           LIMIT {{limit:UInt32}}"""


def _limit(default: int) -> dict[str, Param]:
    return {"limit": Param("UInt32", default, "rows to show")}


_KPI_LIST = [
    # ---- Amundsen seed ----------------------------------------------------------------
    Kpi("dau", "Daily active users: distinct users per day",
        "SELECT ds, uniqExact(user) AS active_users FROM user_actions WHERE " + IN_FILTERS
        + " GROUP BY ds ORDER BY ds",
        Chart("ds", "active_users")),
    Kpi("dau_weekdays", "Daily active users on weekdays only (Saturdays and Sundays left out)",
        "SELECT ds, uniqExact(user) AS active_users FROM user_actions WHERE is_weekend = 0 AND " + IN_FILTERS
        + " GROUP BY ds ORDER BY ds",
        Chart("ds", "active_users")),
    Kpi("wau", "Weekly active users per calendar week (Monday start), over the days in the range; "
               "a week the range cuts is marked partial",
        """SELECT toMonday(ds) AS week, uniqExact(user) AS active_users,
                  toUInt8(week < {since:Date} OR addDays(week, 6) > {until:Date}) AS partial
           FROM user_actions
           WHERE """ + IN_FILTERS + """
           GROUP BY week
           ORDER BY week""",
        Chart("week", "active_users")),
    Kpi("role_penetration",
        "Share of each role's people (profiles) active in the range, roles larger than --threshold",
        """SELECT profile.title AS title, uniqExact(active.user) AS active_users,
                  any(roles.role_size) AS role_size, active_users * 100 / role_size AS penetration_percent
           FROM (SELECT DISTINCT user FROM user_actions
                 WHERE """ + IN_FILTERS + """) AS active
           INNER JOIN kpi_profiles AS profile ON profile.user = active.user
           INNER JOIN kpi_role_sizes AS roles ON roles.title = profile.title
           WHERE roles.role_size > {threshold:UInt32}
           GROUP BY title
           ORDER BY penetration_percent DESC, title""",
        Chart("title", "penetration_percent", "bar"),
        {"threshold": Param("UInt32", 20, "only roles with more people than this")}),
    Kpi("role_usage", "Usage breakdown per role: events and active users per profile title",
        """SELECT profile.title AS title, count() AS events, uniqExact(action.user) AS active_users
           FROM (SELECT user FROM kpi_actions WHERE """ + IN_FILTERS + """) AS action
           INNER JOIN kpi_profiles AS profile ON profile.user = action.user
           GROUP BY title
           ORDER BY events DESC, title
           LIMIT {limit:UInt32}""",
        Chart("title", "events", "bar"), _limit(15)),
    Kpi("users_per_role", "Active users per role, next to how many people hold the role",
        """SELECT profile.title AS title, uniqExact(active.user) AS active_users, any(roles.role_size) AS role_size
           FROM (SELECT DISTINCT user FROM user_actions
                 WHERE """ + IN_FILTERS + """) AS active
           INNER JOIN kpi_profiles AS profile ON profile.user = active.user
           INNER JOIN kpi_role_sizes AS roles ON roles.title = profile.title
           GROUP BY title
           ORDER BY active_users DESC, title""",
        Chart("title", "active_users", "bar")),
    Kpi("search_ctr",
        "Search click-through rate per day: % of search-result clicks on result index <= 3",
        """SELECT ds, count() AS clicks, countIf(result_index <= 3) AS top3_clicks,
                  top3_clicks * 100 / clicks AS click_through_rate
           FROM kpi_search_clicks
           WHERE """ + IN_FILTERS + """
           GROUP BY ds
           ORDER BY ds""",
        Chart("ds", "click_through_rate")),
    Kpi("top_users", "Most active users: events and active days (top 50)",
        """SELECT leaders.user AS user, profile.title AS title, leaders.events AS events, leaders.active_days AS active_days
           FROM (SELECT user, count() AS events, uniqExact(ds) AS active_days FROM kpi_actions
                 WHERE """ + IN_FILTERS + """
                 GROUP BY user ORDER BY events DESC, user LIMIT {limit:UInt32}) AS leaders
           LEFT JOIN kpi_profiles AS profile ON profile.user = leaders.user
           ORDER BY events DESC, user""",
        Chart("user", "events", "bar"), _limit(50)),
    Kpi("top_search_terms", "Most searched terms (lower-cased), with how many users searched them",
        """SELECT lower(trimBoth(search_term)) AS term, count() AS searches, uniqExact(user) AS users
           FROM kpi_actions
           WHERE is_search AND """ + IN_FILTERS + """
           GROUP BY term
           ORDER BY searches DESC, term
           LIMIT {limit:UInt32}""",
        Chart("term", "searches", "bar"), _limit(20)),
    Kpi("top_resources", "Most viewed tables and dashboards (top --limit of each)",
        """SELECT target_type, resource_key, count() AS views, uniqExact(user) AS viewers
           FROM kpi_resource_views
           WHERE """ + IN_FILTERS + """
           GROUP BY target_type, resource_key
           ORDER BY target_type, views DESC, resource_key
           LIMIT {limit:UInt32} BY target_type""",
        Chart("resource_key", "views", "bar", series="target_type"), _limit(20)),
    Kpi("metadata_edits", "Metadata edits (descriptions, tags, owners) per day, and how many people edited",
        """SELECT ds, count() AS edits, uniqExact(user) AS editors
           FROM kpi_metadata_edits
           WHERE """ + IN_FILTERS + """
           GROUP BY ds
           ORDER BY ds""",
        Chart("ds", "edits")),
    Kpi("edit_leaders", "Users who edit metadata most, and how many distinct resources they edited",
        """SELECT user, count() AS edits, uniqExactIf(resource_key, resource_key != '') AS resources_edited
           FROM kpi_metadata_edits
           WHERE """ + IN_FILTERS + """
           GROUP BY user
           ORDER BY edits DESC, user
           LIMIT {limit:UInt32}""",
        Chart("user", "edits", "bar"), _limit(20)),
    # ---- Elevio seed ----------------------------------------------------------------
    Kpi("popular_actions", "Most used actions: events and failures per action",
        """SELECT event_name, command, count() AS events, countIf(is_error) AS errors
           FROM kpi_actions
           WHERE """ + IN_FILTERS + """
           GROUP BY event_name, command
           ORDER BY events DESC, event_name, command
           LIMIT {limit:UInt32}""",
        Chart("event_name", "events", "bar"), _limit(20)),
    Kpi("errors", "Error analysis: failures per action and error message, how many people met each, "
                  "first and last seen",
        """SELECT event_name, command, error_message, count() AS errors, uniqExact(user) AS users,
                  min(ts) AS first_seen, max(ts) AS last_seen
           FROM kpi_actions
           WHERE is_error AND """ + IN_FILTERS + """
           GROUP BY event_name, command, error_message
           ORDER BY errors DESC, event_name, command, error_message
           LIMIT {limit:UInt32}""",
        Chart("event_name", "errors", "bar"), _limit(20)),
    Kpi("user_stats", "One user's usage over the last --days days up to --until (user id or email)",
        """SELECT event_name, command, count() AS events, uniqExact(ds) AS active_days,
                  countIf(is_error) AS errors, max(ts) AS last_seen
           FROM kpi_actions
           WHERE (user = {user:String} OR user_email = {user:String}) AND """ + IN_APP + """
             AND ds > subtractDays({until:Date}, {days:UInt32}) AND ds <= {until:Date}
           GROUP BY event_name, command
           ORDER BY events DESC, event_name, command""",
        Chart("event_name", "events", "bar"),
        {"user": Param("String", None, "user id or email"),
         "days": Param("UInt32", 30, "how many days back from --until")}, filters=("app", "until")),
    # ---- Datagrok seed --------------------------------------------------------------
    Kpi("command_usage", "Commands per app: calls, users, duration p50/p95/p99 (ms) and error rate",
        _command_usage_sql("app", "uniqExact(user) AS users, "),
        Chart("command", "p95_ms", "bar", series="app"), _limit(50)),
    Kpi("command_usage_by_user", "Commands per user: calls, duration p50/p95/p99 (ms) and error rate",
        _command_usage_sql("user"),
        Chart("user", "calls", "bar"), _limit(50)),
    # ---- Amplitude seed -------------------------------------------------------------
    Kpi("retention",
        "Users active in week N who come back in week N+--weeks, per A/B --flag variant",
        """WITH user_weeks AS (
               SELECT DISTINCT user, toMonday(ds) AS week FROM user_actions
               WHERE """ + IN_APP + " AND " + IN_PEOPLE + """ AND toMonday(ds) BETWEEN toMonday({since:Date}) AND {until:Date}),
           returns AS (SELECT user, subtractWeeks(week, {weeks:UInt32}) AS cohort_week FROM user_weeks)
           SELECT cohort.week AS week,
                  multiIf({flag:String} = '', 'all', profile.ab_flags[{flag:String}] = '', '(unset)',
                          profile.ab_flags[{flag:String}]) AS variant,
                  count() AS active_users, countIf(returned.user != '') AS returned_users,
                  returned_users * 100 / active_users AS retention_percent
           FROM user_weeks AS cohort
           LEFT JOIN returns AS returned ON returned.user = cohort.user AND returned.cohort_week = cohort.week
           LEFT JOIN kpi_profiles AS profile ON profile.user = cohort.user
           WHERE addWeeks(cohort.week, {weeks:UInt32}) <= {until:Date}
           GROUP BY week, variant
           ORDER BY week, variant""",
        Chart("week", "retention_percent", series="variant"),
        {"weeks": Param("UInt32", 1, "k: come back in week N+k"),
         "flag": Param("String", "", "A/B flag in the user's profile to split by ('' = no split)")}),
    Kpi("funnel",
        "Users reaching --step1, then --step2, then --step3 (command or event name, in time order), per A/B --flag",
        """WITH per_user AS (
               SELECT user,
                      groupArrayIf(ts, command = {step1:String} OR event_name = {step1:String}) AS step1_times,
                      groupArrayIf(ts, command = {step2:String} OR event_name = {step2:String}) AS step2_times,
                      groupArrayIf(ts, command = {step3:String} OR event_name = {step3:String}) AS step3_times
               FROM user_actions
               WHERE """ + IN_FILTERS + """
               GROUP BY user),
           reached AS (
               SELECT user, arrayMin(step1_times) AS step1_at,
                      arrayExists(t -> t >= step1_at, step2_times) AS did_step2,
                      arrayMin(arrayFilter(t -> t >= step1_at, step2_times)) AS step2_at,
                      did_step2 AND arrayExists(t -> t >= step2_at, step3_times) AS did_step3
               FROM per_user
               WHERE notEmpty(step1_times)),
           by_variant AS (
               SELECT multiIf({flag:String} = '', 'all', profile.ab_flags[{flag:String}] = '', '(unset)',
                              profile.ab_flags[{flag:String}]) AS variant,
                      count() AS step1_users, countIf(did_step2) AS step2_users, countIf(did_step3) AS step3_users
               FROM reached LEFT JOIN kpi_profiles AS profile ON profile.user = reached.user
               GROUP BY variant)
           SELECT variant, funnel_step.1 AS step, funnel_step.2 AS action, funnel_step.3 AS users,
                  users * 100 / step1_users AS percent_of_step1
           FROM by_variant
           ARRAY JOIN [(1, {step1:String}, step1_users), (2, {step2:String}, step2_users),
                       (3, {step3:String}, step3_users)] AS funnel_step
           WHERE action != ''
           ORDER BY variant, step""",
        Chart("action", "users", "bar", series="variant"),
        {"step1": Param("String", "search_table", "first step (command or event name)"),
         "step2": Param("String", "_get_table_metadata", "second step"),
         "step3": Param("String", "", "optional third step"),
         "flag": Param("String", "", "A/B flag in the user's profile to split by ('' = no split)")}),
]

KPIS: dict[str, Kpi] = {kpi.name: kpi for kpi in [*_KPI_LIST, *USAGE_KPIS]}


def get_kpi(name: str) -> Kpi:
    if name not in KPIS:
        raise KpiError(f"unknown report {name!r}; `tally report --list` shows them")
    return KPIS[name]
