-- 0020: rejected_callback partitioned by week of first_received_at, as the raw log is.
-- migrate: one statement at a time, outside a transaction
--
-- The same way as 0018 and 0019, in one file: what reads the whole table
-- first, while refused deliveries go on being kept; then the swap, in one DO
-- block (one transaction) that only renames and attaches.
--
-- Refused bodies carry no date of their own, so the partition key is when
-- one was first refused, and no unique key can say that a body refused again
-- next week is the same one: the same body refused again is found by a
-- lookup across partitions, one session at a time per body (an advisory lock
-- in app.receive.rejects), and counted on its first row as before.
--
-- Each statement may run again after a failure.

CREATE TABLE IF NOT EXISTS rejects_partitioning (
    id       boolean     PRIMARY KEY DEFAULT true CHECK (id),
    boundary timestamptz NOT NULL
);
INSERT INTO rejects_partitioning (boundary)
SELECT (date_trunc('week', now() AT TIME ZONE 'UTC') + interval '2 weeks') AT TIME ZONE 'UTC'
ON CONFLICT (id) DO NOTHING;

DO $$
DECLARE
    boundary timestamptz := (SELECT p.boundary FROM rejects_partitioning p);
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conname = 'rejected_callback_before_partitioning') THEN
        RETURN;
    END IF;
    FOR attempt IN 1..100 LOOP
        BEGIN
            SET LOCAL lock_timeout = '200ms';
            EXECUTE format('ALTER TABLE rejected_callback'
                           ' ADD CONSTRAINT rejected_callback_before_partitioning'
                           ' CHECK (first_received_at < %L) NOT VALID', boundary);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.2);
        END;
    END LOOP;
    RAISE EXCEPTION 'rejected_callback stayed locked by other sessions; run migrate again';
END
$$;

-- First refused more than two weeks ahead of now: a clock far off. Set
-- aside, kept again by the swap below.
CREATE TABLE IF NOT EXISTS rejected_callback_held AS
SELECT * FROM rejected_callback
 WHERE first_received_at >= (SELECT boundary FROM rejects_partitioning);

DELETE FROM rejected_callback WHERE id IN (SELECT id FROM rejected_callback_held);

ALTER TABLE rejected_callback VALIDATE CONSTRAINT rejected_callback_before_partitioning;

DROP INDEX CONCURRENTLY IF EXISTS rejected_callback_id_first_received_at;
CREATE UNIQUE INDEX CONCURRENTLY rejected_callback_id_first_received_at
    ON rejected_callback (id, first_received_at);
DROP INDEX CONCURRENTLY IF EXISTS rejected_callback_body_idx;
CREATE INDEX CONCURRENTLY rejected_callback_body_idx ON rejected_callback (kind, body_sha256);

DO $$
DECLARE
    boundary timestamptz := (SELECT p.boundary FROM rejects_partitioning p);
    next_id bigint;
BEGIN
    FOR attempt IN 1..300 LOOP
        BEGIN
            SET LOCAL lock_timeout = '200ms';
            LOCK TABLE rejected_callback IN ACCESS EXCLUSIVE MODE;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.1);
        END;
        IF attempt = 300 THEN
            RAISE EXCEPTION 'rejected_callback stayed locked by other sessions; run migrate again';
        END IF;
    END LOOP;
    SET LOCAL lock_timeout = 0;

    ALTER TABLE rejected_callback DROP CONSTRAINT rejected_callback_pkey;
    ALTER TABLE rejected_callback ADD CONSTRAINT rejected_callback_older_pkey
        PRIMARY KEY USING INDEX rejected_callback_id_first_received_at;
    ALTER TABLE rejected_callback DROP CONSTRAINT rejected_callback_body_key;
    ALTER INDEX rejected_callback_body_idx RENAME TO rejected_callback_older_body_idx;
    ALTER INDEX rejected_callback_raw_callback_id_idx
        RENAME TO rejected_callback_older_raw_callback_id_idx;
    ALTER INDEX rejected_callback_unresolved_idx RENAME TO rejected_callback_older_unresolved_idx;
    ALTER TABLE rejected_callback RENAME TO rejected_callback_older;
    SELECT coalesce(last_value, 0) + 1 INTO next_id
      FROM pg_sequences
     WHERE schemaname = 'public'
       AND sequencename = split_part(pg_get_serial_sequence('rejected_callback_older', 'id'), '.', 2);
    ALTER TABLE rejected_callback_older ALTER COLUMN id DROP IDENTITY;

    CREATE TABLE rejected_callback (
        id                  bigint      GENERATED ALWAYS AS IDENTITY,
        kind                text        NOT NULL CONSTRAINT rejected_callback_kind_check
                                        CHECK (kind IN ('message_status', 'final_report', 'messages_status')),
        -- NULL when the body was too large to read.
        body                bytea,
        body_sha256         bytea,
        body_size           bigint,
        content_type        text,
        http_status         smallint    NOT NULL,
        reason              text        NOT NULL,
        message             text        NOT NULL,
        errors              jsonb       NOT NULL DEFAULT '{}'::jsonb,
        attempts            integer     NOT NULL DEFAULT 1,
        -- The partition key.
        first_received_at   timestamptz NOT NULL,
        last_received_at    timestamptz NOT NULL,
        reprocess_attempts  integer     NOT NULL DEFAULT 0,
        last_reprocessed_at timestamptz,
        resolved_at         timestamptz,
        raw_callback_id     bigint,
        tokens              text[]      NOT NULL DEFAULT '{}',
        CONSTRAINT rejected_callback_pkey PRIMARY KEY (id, first_received_at)
    ) PARTITION BY RANGE (first_received_at);
    -- Not unique: a body refused again is found through it, under a lock.
    CREATE INDEX rejected_callback_body_idx ON rejected_callback (kind, body_sha256);
    CREATE INDEX rejected_callback_raw_callback_id_idx ON rejected_callback (raw_callback_id)
        WHERE raw_callback_id IS NOT NULL;
    CREATE INDEX rejected_callback_unresolved_idx ON rejected_callback (id)
        WHERE resolved_at IS NULL;
    COMMENT ON COLUMN rejected_callback.raw_callback_id IS
        'The raw callback this reject was recovered as; it may have been pruned since.';
    EXECUTE format('ALTER TABLE rejected_callback ALTER COLUMN id RESTART WITH %s', next_id);
    EXECUTE format('ALTER TABLE rejected_callback ATTACH PARTITION rejected_callback_older'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', boundary);
    ALTER TABLE rejected_callback_older DROP CONSTRAINT rejected_callback_before_partitioning;
    CREATE TABLE rejected_callback_default PARTITION OF rejected_callback DEFAULT;
    INSERT INTO rejected_callback OVERRIDING SYSTEM VALUE SELECT * FROM rejected_callback_held;
    DROP TABLE rejected_callback_held;
    DROP TABLE rejects_partitioning;
END
$$;
