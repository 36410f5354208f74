-- 0021: the analytics views' daily figures kept in tables, so that a question costs the
-- days it asks about, not the whole history.
-- migrate: one statement at a time, outside a transaction
--
-- At five million workflows the daily views (channel_funnel_daily,
-- channel_cost_daily, failover_rate_daily, and failover_rate over it) took
-- 4-9 s: each aggregated every message or workflow of all time. Now each day's
-- figures are kept in daily.*, and triggers on the tables they come from
-- note the days a change touches (daily.stale_day). The views give the kept
-- figures of the other days and compute the noted days (and rows without an
-- event time) as before, from the same snapshot: they are exact whenever they
-- are read, and fast when few days are noted. The appliers (and `migrate`)
-- refresh the noted days every ANALYTICS_REFRESH_SECONDS (app/store/daily_figures.py).
--
-- Each statement may run again: a failure leaves the migration unrecorded and
-- the next `migrate` starts over.

CREATE SCHEMA IF NOT EXISTS daily;
COMMENT ON SCHEMA daily IS 'The analytics views'' daily figures, kept (app/store/daily_figures.py); read them through the analytics views, which are exact.';

-- One row per change, never updated: a refresh deletes the rows its snapshot
-- sees, so a change committed after that snapshot leaves its row for the next.
CREATE TABLE IF NOT EXISTS daily.stale_day (
    day date NOT NULL
);
COMMENT ON TABLE daily.stale_day IS 'UTC days (of first events) whose kept figures a change made stale; the views compute these days, a refresh keeps them again.';

CREATE TABLE IF NOT EXISTS daily.channel_funnel (
    day                         date   NOT NULL,
    api                         text,
    channel                     text,
    sent                        bigint NOT NULL,
    delivered                   bigint NOT NULL,
    read                        bigint NOT NULL,
    failed                      bigint NOT NULL,
    delivery_rate               numeric,
    read_rate                   numeric,
    median_seconds_to_delivered double precision,
    p95_seconds_to_delivered    double precision,
    median_seconds_to_read      double precision,
    p95_seconds_to_read         double precision
);
CREATE INDEX IF NOT EXISTS channel_funnel_daily_day_idx ON daily.channel_funnel (day);

CREATE TABLE IF NOT EXISTS daily.channel_cost (
    day             date   NOT NULL,
    api             text,
    channel         text,
    currency        text,
    priced_messages bigint NOT NULL,
    cost            numeric
);
CREATE INDEX IF NOT EXISTS channel_cost_daily_day_idx ON daily.channel_cost (day);

CREATE TABLE IF NOT EXISTS daily.failover_rate (
    day           date   NOT NULL,
    api           text,
    step          bigint,
    channel       text,
    messages      bigint NOT NULL,
    failed_over   bigint NOT NULL,
    failover_rate numeric
);
CREATE INDEX IF NOT EXISTS failover_rate_daily_day_idx ON daily.failover_rate (day);

-- The views and refreshes find a day's messages and workflows by these (built
-- without holding the applier: a failed build leaves an invalid index, dropped
-- before building again). A workflow's or message's first event rarely moves,
-- so updates that could be HOT still are.
DROP INDEX CONCURRENTLY IF EXISTS message_first_event_day_idx;
CREATE INDEX CONCURRENTLY message_first_event_day_idx
    ON message (((first_event_at AT TIME ZONE 'UTC')::date));
DROP INDEX CONCURRENTLY IF EXISTS dispatch_first_event_day_idx;
CREATE INDEX CONCURRENTLY dispatch_first_event_day_idx
    ON dispatch (((first_event_at AT TIME ZONE 'UTC')::date));

-- message and dispatch: the days of the rows a statement changed, before and after.
CREATE OR REPLACE FUNCTION daily.note_days() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO daily.stale_day (day)
        SELECT DISTINCT (first_event_at AT TIME ZONE 'UTC')::date
          FROM old_rows WHERE first_event_at IS NOT NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO daily.stale_day (day)
        SELECT DISTINCT (n.first_event_at AT TIME ZONE 'UTC')::date
          FROM new_rows n WHERE n.first_event_at IS NOT NULL;
    END IF;
    RETURN NULL;
END
$$;

-- workflow_definition: a definition changes its workflow's failover steps.
CREATE OR REPLACE FUNCTION daily.note_definition_days() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO daily.stale_day (day)
        SELECT DISTINCT (d.first_event_at AT TIME ZONE 'UTC')::date
          FROM old_rows o JOIN dispatch d USING (dispatch_uuid)
         WHERE d.first_event_at IS NOT NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO daily.stale_day (day)
        SELECT DISTINCT (d.first_event_at AT TIME ZONE 'UTC')::date
          FROM new_rows n JOIN dispatch d USING (dispatch_uuid)
         WHERE d.first_event_at IS NOT NULL;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE names no rows: forget every kept figure and note the days of what is left.
CREATE OR REPLACE FUNCTION daily.note_truncated() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM daily.channel_funnel;
    DELETE FROM daily.channel_cost;
    DELETE FROM daily.failover_rate;
    INSERT INTO daily.stale_day (day)
    SELECT (first_event_at AT TIME ZONE 'UTC')::date FROM message WHERE first_event_at IS NOT NULL
    UNION
    SELECT (first_event_at AT TIME ZONE 'UTC')::date FROM dispatch WHERE first_event_at IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER message_note_days_inserted AFTER INSERT ON message
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION daily.note_days();
CREATE OR REPLACE TRIGGER message_note_days_updated AFTER UPDATE ON message
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_days();
CREATE OR REPLACE TRIGGER message_note_days_deleted AFTER DELETE ON message
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION daily.note_days();
CREATE OR REPLACE TRIGGER message_note_truncated AFTER TRUNCATE ON message
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_truncated();

CREATE OR REPLACE TRIGGER dispatch_note_days_inserted AFTER INSERT ON dispatch
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION daily.note_days();
CREATE OR REPLACE TRIGGER dispatch_note_days_updated AFTER UPDATE ON dispatch
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_days();
CREATE OR REPLACE TRIGGER dispatch_note_days_deleted AFTER DELETE ON dispatch
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION daily.note_days();
CREATE OR REPLACE TRIGGER dispatch_note_truncated AFTER TRUNCATE ON dispatch
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_truncated();

CREATE OR REPLACE TRIGGER workflow_definition_note_days_inserted AFTER INSERT ON workflow_definition
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_definition_days();
CREATE OR REPLACE TRIGGER workflow_definition_note_days_updated AFTER UPDATE ON workflow_definition
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_definition_days();
CREATE OR REPLACE TRIGGER workflow_definition_note_days_deleted AFTER DELETE ON workflow_definition
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_definition_days();
CREATE OR REPLACE TRIGGER workflow_definition_note_truncated AFTER TRUNCATE ON workflow_definition
    FOR EACH STATEMENT EXECUTE FUNCTION daily.note_truncated();

-- Nothing is kept yet: every day there is is stale (the triggers note what changes from now).
INSERT INTO daily.stale_day (day)
SELECT (first_event_at AT TIME ZONE 'UTC')::date FROM message WHERE first_event_at IS NOT NULL
UNION
SELECT (first_event_at AT TIME ZONE 'UTC')::date FROM dispatch WHERE first_event_at IS NOT NULL;
