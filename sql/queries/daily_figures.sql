-- The analytics views' kept daily figures (migration 0021): kept again for the stale days.

-- name: hold_daily_figures
-- Become, until the transaction ends, the one session keeping them; false if another is.
SELECT pg_try_advisory_xact_lock(%(key)s) AS taken;

-- name: keep_without_hurry
-- A keep is background work: it may take longer than a request's statement timeout, and reads days of rows whole, with the memory to keep their bitmaps exact and their sorts off disk (one session keeps at a time).
SELECT set_config('statement_timeout', %(timeout)s, true),
       set_config('work_mem', %(work_mem)s, true);

-- name: stale_days_to_keep
-- Up to `limit` stale days, the most recent first (the ones dashboards read).
SELECT DISTINCT day FROM daily.stale_day ORDER BY day DESC LIMIT %(limit)s;

-- name: keeping
-- The days this transaction keeps: the daily.*_now views compute only these (daily.keeping_days()).
SELECT set_config('daily.keeping', %(days)s, true);

-- name: keep_daily_figures
-- In one statement, so from one snapshot: the days being kept stored as the
-- daily.*_now views compute them now, and their stale rows that the snapshot
-- sees forgotten (one committed after it stays for the next keep). Days
-- without an event time (null) are never kept: the views compute them.
WITH seen AS (
    DELETE FROM daily.stale_day WHERE day = ANY (daily.keeping_days()) RETURNING day
), funnel_gone AS (
    DELETE FROM daily.channel_funnel WHERE day = ANY (daily.keeping_days())
), funnel AS (
    INSERT INTO daily.channel_funnel
    SELECT * FROM daily.channel_funnel_now WHERE day IS NOT NULL
), cost_gone AS (
    DELETE FROM daily.channel_cost WHERE day = ANY (daily.keeping_days())
), cost AS (
    INSERT INTO daily.channel_cost
    SELECT * FROM daily.channel_cost_now WHERE day IS NOT NULL
), failover_gone AS (
    DELETE FROM daily.failover_rate WHERE day = ANY (daily.keeping_days())
), failover AS (
    INSERT INTO daily.failover_rate
    SELECT * FROM daily.failover_rate_now WHERE day IS NOT NULL
)
SELECT count(DISTINCT day) AS days FROM seen;

-- name: stale_days
-- How many days the views compute for want of kept figures.
SELECT count(DISTINCT day) AS days FROM daily.stale_day;
