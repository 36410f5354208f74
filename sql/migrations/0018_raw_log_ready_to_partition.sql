-- 0018: the raw log made ready to become one partition of itself, while callbacks keep coming.
-- migrate: one statement at a time, outside a transaction
--
-- 0019 makes raw_callback a table partitioned by week of event_at, and
-- attaches the log as it stands as its partition for everything before a
-- boundary. PostgreSQL attaches a table without reading it when a validated
-- CHECK constraint already proves its range, and reuses its indexes when they
-- match the new table's: so everything here that reads the whole log (the
-- validation, two unique indexes) runs now, under locks that let captures on,
-- and 0019 only renames and attaches, in milliseconds.
--
-- Each statement may run again: a failure leaves the migration unrecorded and
-- the next `migrate` starts over.

-- The boundary: the Monday after next (UTC). Callbacks captured until 0019
-- runs, and then until that Monday, go to the attached log.
CREATE TABLE IF NOT EXISTS raw_log_partitioning (
    id       boolean     PRIMARY KEY DEFAULT true CHECK (id),
    boundary timestamptz NOT NULL
);
INSERT INTO raw_log_partitioning (boundary)
SELECT (date_trunc('week', now() AT TIME ZONE 'UTC') + interval '2 weeks') AT TIME ZONE 'UTC'
ON CONFLICT (id) DO NOTHING;

-- From now on, a callback dated after the boundary (a sender's clock far
-- ahead) is refused until 0019 has run (its sender retries); those already
-- stored are set aside below and stored again by 0019. Adding the constraint
-- locks the log for a moment: tried a few times, never waiting long in front
-- of the captures.
DO $$
DECLARE
    boundary timestamptz := (SELECT p.boundary FROM raw_log_partitioning p);
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conname = 'raw_callback_before_partitioning') THEN
        RETURN;
    END IF;
    FOR attempt IN 1..100 LOOP
        BEGIN
            SET LOCAL lock_timeout = '200ms';
            EXECUTE format('ALTER TABLE raw_callback ADD CONSTRAINT raw_callback_before_partitioning'
                           ' CHECK (event_at < %L) NOT VALID', boundary);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.2);
        END;
    END LOOP;
    RAISE EXCEPTION 'raw_callback stayed locked by other sessions; run migrate again';
END
$$;

CREATE TABLE IF NOT EXISTS raw_callback_held AS
SELECT * FROM raw_callback WHERE event_at >= (SELECT boundary FROM raw_log_partitioning);

DELETE FROM raw_callback WHERE id IN (SELECT id FROM raw_callback_held);

-- Reads the whole log; captures go on (SHARE UPDATE EXCLUSIVE).
ALTER TABLE raw_callback VALIDATE CONSTRAINT raw_callback_before_partitioning;

-- The partitioned table's keys must hold the partition key: these become the
-- attached log's primary key and dedup key in 0019. A failed concurrent build
-- leaves an invalid index behind, dropped before building again.
DROP INDEX CONCURRENTLY IF EXISTS raw_callback_id_event_at;
CREATE UNIQUE INDEX CONCURRENTLY raw_callback_id_event_at ON raw_callback (id, event_at);
DROP INDEX CONCURRENTLY IF EXISTS raw_callback_key_event_at;
CREATE UNIQUE INDEX CONCURRENTLY raw_callback_key_event_at
    ON raw_callback (kind, dedup_key, event_at);
