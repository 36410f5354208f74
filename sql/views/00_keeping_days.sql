-- daily.keeping_days(): the days a keep is storing now, or null outside a keep.
--
-- The daily.*_now views compute the stale days (daily.stale_day); a keep
-- stores a few of them per transaction (app/store/daily_figures.py), and sets
-- daily.keeping for that transaction only, so that the same views, the one
-- place of each rule, compute just those days. Anyone may set it in their own
-- session: it only narrows what that session's views compute.
CREATE OR REPLACE FUNCTION daily.keeping_days() RETURNS date[]
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN nullif(current_setting('daily.keeping', true), '')::date[];

-- daily.days_computed: the days the daily.*_now views compute: the stale
-- ones, or during a keep only those it keeps. Each view reads each day's rows
-- through an index, one scan a day (see channel_funnel_now).
CREATE VIEW daily.days_computed AS
SELECT DISTINCT day FROM daily.stale_day
 WHERE day = ANY (daily.keeping_days()) OR daily.keeping_days() IS NULL;
