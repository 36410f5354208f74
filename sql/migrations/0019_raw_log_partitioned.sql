-- 0019: raw_callback becomes a table partitioned by week of event_at.
--
-- Why event_at (the callback's own timestamp) and not received_at: a
-- partitioned table's unique keys must hold the partition key, and event_at
-- is part of the body, so every redelivery of a callback carries the same
-- one. The unique key (kind, dedup_key, event_at) is then exactly the old
-- (kind, dedup_key): a redelivery lands in the partition of its first copy,
-- however many days or partition boundaries later it comes, and a concurrent
-- pair still meets on one index entry. With received_at, a redelivery after a
-- boundary would need a lookaside key table (one more insert per capture, and
-- its own retention by DELETE) or a racy look-back.
--
-- The log as it stands becomes the partition for everything dated before the
-- boundary 0018 chose (`raw_callback_older`), attached without a scan
-- (0018 validated its CHECK constraint and built its new keys). Weekly
-- partitions from the boundary on are made ahead of time by the service
-- (app.store.partitions); whatever is dated outside them (years back, or far
-- ahead) goes to raw_callback_default, so that no callback is ever refused
-- for its date. All of this holds the log's tables for milliseconds.

-- The locks first, all at once and in the order the applier takes them,
-- waiting at most 200 ms at a time so that the captures never queue for long
-- behind this (and a deadlock is broken by the timeout, here, not in them).
DO $$
BEGIN
    FOR attempt IN 1..300 LOOP
        BEGIN
            SET LOCAL lock_timeout = '200ms';
            LOCK TABLE apply_queue, raw_callback, discrepancy, rejected_callback
                IN ACCESS EXCLUSIVE MODE;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.1);
        END;
    END LOOP;
    RAISE EXCEPTION 'the raw log stayed locked by other sessions; run migrate again';
END
$$;
SET LOCAL lock_timeout = 0;

-- A partitioned table's rows cannot be referenced by id alone. What named a
-- raw callback (a disagreement's first witness, a recovered reject) keeps its
-- id, which may name a pruned callback.
ALTER TABLE discrepancy DROP CONSTRAINT discrepancy_raw_callback_id_fkey;
ALTER TABLE rejected_callback DROP CONSTRAINT rejected_callback_raw_callback_id_fkey;
COMMENT ON COLUMN discrepancy.raw_callback_id IS
    'The raw callback that first showed it; it may have been pruned since.';
COMMENT ON COLUMN rejected_callback.raw_callback_id IS
    'The raw callback this reject was recovered as; it may have been pruned since.';

-- The log as it stands: its keys swapped for those 0018 built, names freed.
ALTER TABLE raw_callback DROP CONSTRAINT raw_callback_pkey;
ALTER TABLE raw_callback ADD CONSTRAINT raw_callback_older_pkey
    PRIMARY KEY USING INDEX raw_callback_id_event_at;
ALTER TABLE raw_callback DROP CONSTRAINT raw_callback_dedup_key;
ALTER TABLE raw_callback ADD CONSTRAINT raw_callback_older_dedup_key
    UNIQUE USING INDEX raw_callback_key_event_at;
ALTER INDEX raw_callback_message_uuid_idx RENAME TO raw_callback_older_message_uuid_idx;
ALTER INDEX raw_callback_dispatch_uuid_idx RENAME TO raw_callback_older_dispatch_uuid_idx;
ALTER INDEX raw_callback_received_at_idx RENAME TO raw_callback_older_received_at_idx;
DROP TRIGGER raw_callback_queued ON raw_callback;
ALTER TABLE raw_callback RENAME TO raw_callback_older;

-- The new table's ids go on from the old sequence's.
CREATE TEMP TABLE raw_log_next_id ON COMMIT DROP AS
SELECT coalesce(last_value, 0) + 1 AS next_id
  FROM pg_sequences
 WHERE schemaname = 'public'
   AND sequencename = (SELECT split_part(pg_get_serial_sequence('raw_callback_older', 'id'), '.', 2));
ALTER TABLE raw_callback_older ALTER COLUMN id DROP IDENTITY;

CREATE TABLE raw_callback (
    id               bigint      GENERATED ALWAYS AS IDENTITY,
    kind             text        NOT NULL CONSTRAINT raw_callback_kind_check
                                 CHECK (kind IN ('message_status', 'final_report', 'messages_status')),
    -- SHA-256 of the payload in canonical JSON: the same callback re-serialized
    -- with other spacing or key order is still the same callback.
    dedup_key        bytea       NOT NULL,
    body             bytea       NOT NULL,
    payload          jsonb       NOT NULL,
    content_type     text,
    message_uuid     text,
    dispatch_uuid    text,
    -- The callback's own timestamp, and the partition key.
    event_at         timestamptz NOT NULL,
    received_at      timestamptz NOT NULL,
    deliveries       integer     NOT NULL DEFAULT 1,
    last_received_at timestamptz NOT NULL,
    CONSTRAINT raw_callback_pkey PRIMARY KEY (id, event_at),
    -- The dedup key: event_at is a function of the body, so this is unique
    -- on (kind, dedup_key) alone. Old code's ON CONFLICT ON CONSTRAINT still finds it.
    CONSTRAINT raw_callback_dedup_key UNIQUE (kind, dedup_key, event_at)
) PARTITION BY RANGE (event_at);
CREATE INDEX raw_callback_message_uuid_idx ON raw_callback (message_uuid)
    WHERE message_uuid IS NOT NULL;
CREATE INDEX raw_callback_dispatch_uuid_idx ON raw_callback (dispatch_uuid)
    WHERE dispatch_uuid IS NOT NULL;
CREATE INDEX raw_callback_received_at_idx ON raw_callback (received_at);
COMMENT ON TABLE raw_callback IS
    'Every callback accepted, as received, once (redeliveries are counted); partitioned by week of event_at.';

DO $$
DECLARE
    boundary timestamptz := (SELECT p.boundary FROM raw_log_partitioning p);
BEGIN
    EXECUTE format('ALTER TABLE raw_callback ALTER COLUMN id RESTART WITH %s',
                   (SELECT next_id FROM raw_log_next_id));
    -- No scan: raw_callback_before_partitioning proves the range.
    EXECUTE format('ALTER TABLE raw_callback ATTACH PARTITION raw_callback_older'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', boundary);
END
$$;
ALTER TABLE raw_callback_older DROP CONSTRAINT raw_callback_before_partitioning;
CREATE TABLE raw_callback_default PARTITION OF raw_callback DEFAULT;

-- The queue carries event_at too: a claim then finds each callback in its
-- own partition instead of asking every one.
ALTER TABLE apply_queue ADD COLUMN event_at timestamptz;
UPDATE apply_queue q SET event_at = r.event_at
  FROM raw_callback_older r
 WHERE r.id = q.raw_callback_id;
UPDATE apply_queue q SET event_at = h.event_at
  FROM raw_callback_held h
 WHERE h.id = q.raw_callback_id;
ALTER TABLE apply_queue ALTER COLUMN event_at SET NOT NULL;

-- Set aside by 0018 (dated after the boundary), stored again, still with
-- their ids; before the trigger exists, so that they are not queued twice.
INSERT INTO raw_callback OVERRIDING SYSTEM VALUE SELECT * FROM raw_callback_held;
DROP TABLE raw_callback_held;
DROP TABLE raw_log_partitioning;

CREATE OR REPLACE FUNCTION queue_new_raw_callbacks() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO apply_queue (raw_callback_id, received_at, event_at)
    SELECT id, received_at, event_at FROM stored;
    RETURN NULL;
END
$$;
CREATE TRIGGER raw_callback_queued
    AFTER INSERT ON raw_callback
    REFERENCING NEW TABLE AS stored
    FOR EACH STATEMENT EXECUTE FUNCTION queue_new_raw_callbacks();
