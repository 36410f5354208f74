-- The analytics views' kept daily figures (migration 0021): refreshed for the stale days.

-- name: hold_daily_figures
-- Become, until the transaction ends, the one session refreshing; false if another is.
SELECT pg_try_advisory_xact_lock(%(key)s) AS taken;

-- name: keep_daily_figures
-- In one statement, so from one snapshot: keep the stale days' figures as the
-- daily.*_now views compute them now, and forget the stale rows that snapshot
-- sees (a change committed after it leaves its row for the next refresh).
-- Days without an event time (null) are never kept: the views compute them.
WITH seen AS (
    DELETE FROM daily.stale_day RETURNING day
), funnel_gone AS (
    DELETE FROM daily.channel_funnel WHERE day IN (SELECT day FROM daily.stale_day)
), funnel AS (
    INSERT INTO daily.channel_funnel
    SELECT * FROM daily.channel_funnel_now WHERE day IS NOT NULL
), cost_gone AS (
    DELETE FROM daily.channel_cost WHERE day IN (SELECT day FROM daily.stale_day)
), cost AS (
    INSERT INTO daily.channel_cost
    SELECT * FROM daily.channel_cost_now WHERE day IS NOT NULL
), failover_gone AS (
    DELETE FROM daily.failover_rate WHERE day IN (SELECT day FROM daily.stale_day)
), failover AS (
    INSERT INTO daily.failover_rate
    SELECT * FROM daily.failover_rate_now WHERE day IS NOT NULL
)
SELECT count(DISTINCT day) AS days FROM seen;

-- name: stale_days
-- How many days the views compute for want of kept figures.
SELECT count(DISTINCT day) AS days FROM daily.stale_day;
