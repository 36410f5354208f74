-- 0016: every status the final reports gave a message, not only the highest.
--
-- Two final reports can list one message as `rejected` and as `read`. Only
-- the highest was kept, so a `rejected` that came after a `read` was never
-- seen, and whether the message's contradiction was recorded depended on the
-- order the reports arrived in. The set is kept now (app/model/state.py,
-- MessageState.reported_statuses); `reported_status` stays the highest.
-- What earlier reports said below the highest is not known for rows written
-- before this: `dispatch-ledger rebuild` finds it again from the raw log.
--
-- Adding a column without a default does not rewrite the table; the backfill
-- writes each message that has a reported status once.
-- vacuum after: message
ALTER TABLE message ADD COLUMN reported_statuses text[];
COMMENT ON COLUMN message.reported_statuses IS
    'Every status a final report gave the message (reported_status is the highest).';
UPDATE message SET reported_statuses = ARRAY[reported_status] WHERE reported_status IS NOT NULL;
