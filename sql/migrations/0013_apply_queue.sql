-- 0013: the applier's queue moves out of raw_callback, which is then only ever appended to.
--
-- Until now a callback was waiting while raw_callback.applied_at was NULL, and
-- applying it set applied_at. That update could not be a HOT update (the
-- waiting index's predicate names applied_at), so it copied the whole row
-- (body and payload) and added an entry to each of its six indexes: 1.4 KB of
-- WAL per callback at full load, and a dead row version per callback for
-- vacuum to clean out of the largest table. Now a captured callback gets a
-- row in apply_queue, and applying it deletes that row: about 0.1 KB of WAL.
--
-- The database queues every new raw callback itself (a statement trigger),
-- so no writer can store one that is never applied: not the capture, not
-- `reprocess-rejects`, and not a web process of the previous release that
-- still answers between this migration and its restart.
CREATE TABLE apply_queue (
    raw_callback_id bigint      CONSTRAINT apply_queue_pkey PRIMARY KEY,
    -- raw_callback's, copied: claims and the backlog read the queue alone, in
    -- its own order. A join to the log would let the planner walk the log's
    -- primary key through every applied row to find the few queued ones.
    received_at     timestamptz NOT NULL,
    -- Failed attempts so far, the last one's error, and when to try again
    -- (NULL: as soon as an applier is free).
    attempts        integer     NOT NULL DEFAULT 0,
    error           text,
    apply_after     timestamptz
);
-- No foreign key to raw_callback: checking one would lock the new raw row, a
-- WAL record per callback. `prune-raw` keeps the rows still queued instead.

-- The callbacks that failed, for `dispatch-ledger status` and the dashboard.
-- New rows have no error, so queueing and claiming never touch it.
CREATE INDEX apply_queue_failed_idx ON apply_queue (raw_callback_id) WHERE error IS NOT NULL;
COMMENT ON TABLE apply_queue IS
    'Captured callbacks not applied yet (waiting, or failed with an error); applying one deletes its row.';

-- What was waiting or failed stays so, with its attempts and error.
INSERT INTO apply_queue (raw_callback_id, received_at, attempts, error, apply_after)
SELECT id, received_at, apply_attempts, apply_error, apply_after
  FROM raw_callback
 WHERE applied_at IS NULL;

DROP INDEX raw_callback_waiting_idx;
ALTER TABLE raw_callback
    DROP COLUMN applied_at,
    DROP COLUMN apply_attempts,
    DROP COLUMN apply_error,
    DROP COLUMN apply_after;

CREATE FUNCTION queue_new_raw_callbacks() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO apply_queue (raw_callback_id, received_at) SELECT id, received_at FROM stored;
    RETURN NULL;
END
$$;

-- Once per statement, with the rows it inserted (a conflicting duplicate
-- inserts none): group-committed captures queue theirs in one insert.
CREATE TRIGGER raw_callback_queued
    AFTER INSERT ON raw_callback
    REFERENCING NEW TABLE AS stored
    FOR EACH STATEMENT EXECUTE FUNCTION queue_new_raw_callbacks();
