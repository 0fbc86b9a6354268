-- KPI views over user_actions (the seeds' queries, ported). Every view is exact under duplicate
-- rows: counts read `user_actions FINAL` (through kpi_actions), distinct counts use uniqExact.
-- The named reports in streams/analyst/kpis.py filter these by app and date with query parameters.

-- The deduplicated events plus the definitions every KPI shares, written once:
--   is_error          the action failed (has_error), or it is an error action ("sql_error", Elevio style)
--   is_search_click   a click on a search result (Amundsen: metadata/user page opened from search)
--   is_search         a search that was run (has a term, and is not a click on its results)
--   is_metadata_edit  a description/tag/owner change: `_update...`/`update_...` or "Update"/"Edit" in the name
--   is_resource_view  a table or dashboard opened without editing it
--   error_message     the first line of the error, short enough to group by
CREATE VIEW IF NOT EXISTS kpi_actions AS
SELECT
    *,
    has_error = 1 OR position(command, 'error') > 0 AS is_error,
    command IN ('_get_table_metadata', '_get_dashboard_metadata', '_log_get_user')
        AND source IN ('search_results', 'inline_search') AS is_search_click,
    search_term != '' AND NOT is_search_click AS is_search,
    startsWith(command, '_update') OR startsWith(command, 'update_')
        OR position(event_name, 'Update') > 0 OR position(event_name, 'Edit') > 0 AS is_metadata_edit,
    target_type IN ('table', 'dashboard') AND resource_key != '' AND NOT is_metadata_edit AS is_resource_view,
    substring(splitByChar('\n', error)[1], 1, 200) AS error_message
FROM user_actions FINAL;

-- Distinct users don't add up across apps or days, so the active-user views carry one row per
-- app and one more with app = '' for all apps together.
CREATE VIEW IF NOT EXISTS kpi_dau AS
SELECT toString(app) AS app, ds, uniqExact(user) AS active_users FROM user_actions GROUP BY app, ds
UNION ALL
SELECT '' AS app, ds, uniqExact(user) AS active_users FROM user_actions GROUP BY ds;

-- DAU excluding Saturdays and Sundays.
CREATE VIEW IF NOT EXISTS kpi_dau_weekdays AS
SELECT toString(app) AS app, ds, uniqExact(user) AS active_users FROM user_actions WHERE is_weekend = 0 GROUP BY app, ds
UNION ALL
SELECT '' AS app, ds, uniqExact(user) AS active_users FROM user_actions WHERE is_weekend = 0 GROUP BY ds;

-- WAU by calendar week (starting Monday).
CREATE VIEW IF NOT EXISTS kpi_wau AS
SELECT toString(app) AS app, toMonday(ds) AS week, uniqExact(user) AS active_users FROM user_actions GROUP BY app, week
UNION ALL
SELECT '' AS app, toMonday(ds) AS week, uniqExact(user) AS active_users FROM user_actions GROUP BY week;

-- Events per action and day (additive: sum over days and apps).
CREATE VIEW IF NOT EXISTS kpi_popular_actions AS
SELECT app, ds, event_name, command, count() AS events, countIf(is_error) AS errors
FROM kpi_actions
GROUP BY app, ds, event_name, command;

-- Failed actions per day, grouped by the first line of the error.
CREATE VIEW IF NOT EXISTS kpi_errors AS
SELECT app, ds, event_name, command, error_message, count() AS errors
FROM kpi_actions
WHERE is_error
GROUP BY app, ds, event_name, command, error_message;

-- One row per click on a search result, with the clicked position.
CREATE VIEW IF NOT EXISTS kpi_search_clicks AS
SELECT event_id, app, ds, ts, user, command, source, result_index, resource_key, target_type
FROM kpi_actions
WHERE is_search_click;

-- One row per table or dashboard view.
CREATE VIEW IF NOT EXISTS kpi_resource_views AS
SELECT event_id, app, ds, ts, user, command, target_type, resource_key
FROM kpi_actions
WHERE is_resource_view;

-- One row per metadata edit.
CREATE VIEW IF NOT EXISTS kpi_metadata_edits AS
SELECT event_id, app, ds, ts, user, command, event_name, target_type, resource_key
FROM kpi_actions
WHERE is_metadata_edit;

-- Latest profile per user, and how many people hold each role (title).
CREATE VIEW IF NOT EXISTS kpi_profiles AS
SELECT user, email, title, team, ab_flags FROM user_profiles FINAL;

CREATE VIEW IF NOT EXISTS kpi_role_sizes AS
SELECT title, count() AS role_size FROM kpi_profiles GROUP BY title
