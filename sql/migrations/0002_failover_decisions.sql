-- 0002: workflow definitions, decisions made from them, and reconciliation with final reports.

-- The failover definition of a workflow: sent through this service, or
-- recorded for a workflow another system sent.
CREATE TABLE workflow_definition (
    dispatch_uuid text        CONSTRAINT workflow_definition_pkey PRIMARY KEY
                              CONSTRAINT workflow_definition_dispatch_uuid_fkey
                              REFERENCES dispatch (dispatch_uuid),
    source        text        NOT NULL CONSTRAINT workflow_definition_source_check
                              CHECK (source IN ('sent', 'recorded')),
    -- The Dispatch request body, as given.
    request       jsonb       NOT NULL,
    -- Per step: {"channel", "condition_status", "expiry_time"} (null on the last step).
    steps         jsonb       NOT NULL,
    recorded_at   timestamptz NOT NULL
);

ALTER TABLE dispatch
    -- Who decided `status`: the definition, the final report, or nobody yet.
    ADD COLUMN decided_by   text CONSTRAINT dispatch_decided_by_check
                                 CHECK (decided_by IN ('definition', 'final_report')),
    -- While pending: the step waited for (1-based) and by when something must
    -- happen (its deadline, or when its message was due).
    ADD COLUMN current_step integer,
    ADD COLUMN due_at       timestamptz,
    -- Event time of the outcome, and the step that succeeded.
    ADD COLUMN decided_at   timestamptz,
    ADD COLUMN winning_step integer;

-- For the overdue listing: pending workflows by due time, and decided ones
-- still without a final report.
CREATE INDEX dispatch_due_at_idx ON dispatch (due_at)
    WHERE status = 'pending' AND due_at IS NOT NULL;
CREATE INDEX dispatch_awaiting_report_idx ON dispatch (decided_at)
    WHERE decided_by = 'definition' AND status <> 'pending' AND reported_status IS NULL;

-- How the final report disagrees with the callbacks, as of now: rewritten for a
-- workflow whenever its state changes (a disagreement that later callbacks
-- settle disappears, one they reveal appears).
CREATE TABLE reconciliation (
    id            bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT reconciliation_pkey PRIMARY KEY,
    dispatch_uuid text        NOT NULL CONSTRAINT reconciliation_dispatch_uuid_fkey
                              REFERENCES dispatch (dispatch_uuid),
    kind          text        NOT NULL,
    detail        text        NOT NULL,
    recorded_at   timestamptz NOT NULL,
    CONSTRAINT reconciliation_key UNIQUE (dispatch_uuid, kind, detail)
);
