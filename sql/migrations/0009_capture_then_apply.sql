-- 0009: callbacks are captured by the request and applied after, by an applier.
--
-- A raw callback is waiting while applied_at is NULL. One that failed to
-- apply keeps its error and is tried again after apply_after (backoff).
--
-- Rows stored before this migration were applied in their own request: they
-- are marked applied as of the migration. now() is evaluated once, so adding
-- the column rewrites nothing, whatever the size of the log. A callback the
-- previous release stores between this migration and its own restart is
-- left waiting and applied once more by the new applier: the joins are
-- idempotent, so that changes nothing.
ALTER TABLE raw_callback ADD COLUMN applied_at timestamptz DEFAULT now();
ALTER TABLE raw_callback ALTER COLUMN applied_at DROP DEFAULT;
ALTER TABLE raw_callback
    ADD COLUMN apply_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN apply_error    text,
    ADD COLUMN apply_after    timestamptz;

-- The applier's queue: only waiting rows, so it stays as small as the backlog.
CREATE INDEX raw_callback_waiting_idx ON raw_callback (id) WHERE applied_at IS NULL;
