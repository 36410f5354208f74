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
