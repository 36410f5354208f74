-- 0017: decisions flow onward: workflow events, a feed in commit order, endpoints.
--
-- A committed apply that decides a workflow, makes it overdue or records a
-- disagreement writes a row here in the same transaction (an outbox: no event
-- for a state that rolled back, none lost for one that committed).
--
-- `position` is the feed's order, and it is the order of the commits: every
-- writer takes one advisory lock just before it commits (app/store/events.py)
-- and draws its positions under it, and a transaction becomes visible before
-- its locks are released. So no reader ever sees a position while a smaller
-- one is still to come: `GET /events?after=` never skips an event. `event_id`
-- is what consumers see (Standard Webhooks' `webhook-id`).
CREATE SEQUENCE workflow_event_position AS bigint;

CREATE TABLE workflow_event (
    position      bigint      CONSTRAINT workflow_event_pkey PRIMARY KEY,
    event_id      text        NOT NULL CONSTRAINT workflow_event_event_id_key UNIQUE,
    type          text        NOT NULL CONSTRAINT workflow_event_type_check
                              CHECK (type IN ('workflow.decided', 'workflow.overdue',
                                              'workflow.discrepancy')),
    -- No foreign key: a rebuild empties `dispatch`, and events outlive it.
    dispatch_uuid text        NOT NULL,
    -- The workflow's own count of its events, from 1 (also in `data`).
    sequence      integer     NOT NULL,
    created_at    timestamptz NOT NULL,
    -- The workflow's summary when the event was made: no numbers, no texts.
    data          jsonb       NOT NULL,
    CONSTRAINT workflow_event_sequence_key UNIQUE (dispatch_uuid, sequence)
);
-- `endpoints replay --since`, and retention.
CREATE INDEX workflow_event_created_at_idx ON workflow_event (created_at);
-- So that TRUNCATE ... RESTART IDENTITY starts the feed again too.
ALTER SEQUENCE workflow_event_position OWNED BY workflow_event.position;

-- Each kind of overdue is told once per workflow: the sweeper records it
-- here. Kept through a rebuild, so a rebuild does not tell it again.
CREATE TABLE overdue_notice (
    dispatch_uuid text        NOT NULL,
    kind          text        NOT NULL,
    since         timestamptz NOT NULL,
    noticed_at    timestamptz NOT NULL,
    CONSTRAINT overdue_notice_pkey PRIMARY KEY (dispatch_uuid, kind)
);

-- Receivers of signed webhooks (POST /endpoints, `dispatch-ledger endpoints`).
CREATE TABLE endpoint (
    endpoint_id           text        CONSTRAINT endpoint_pkey PRIMARY KEY,
    url                   text        NOT NULL,
    -- The event types it receives; NULL: every type.
    event_types           text[],
    description           text        NOT NULL DEFAULT '',
    -- Standard Webhooks' whsec_...; the previous one is signed with too
    -- until previous_secret_until (a rotation's grace).
    secret                text        NOT NULL,
    previous_secret       text,
    previous_secret_until timestamptz,
    created_at            timestamptz NOT NULL,
    -- Set when a delivery failed for the whole retry schedule.
    disabled_at           timestamptz,
    disabled_reason       text,
    -- The feed position up to which its deliveries are queued.
    queued_up_to          bigint      NOT NULL,
    -- Its last successful delivery: one given up on disables it only if
    -- none succeeded since that one was first due.
    last_delivered_at     timestamptz
);

-- One row per event to send to an endpoint, until it is delivered or given up.
CREATE TABLE endpoint_delivery (
    endpoint_id     text        NOT NULL CONSTRAINT endpoint_delivery_endpoint_id_fkey
                                REFERENCES endpoint (endpoint_id) ON DELETE CASCADE,
    position        bigint      NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    -- When to try next; NULL once delivered or given up.
    due_at          timestamptz,
    -- A deliverer sending it holds it until then (another takes it after, if
    -- that one died mid-send: at least once).
    leased_until    timestamptz,
    last_attempt_at timestamptz,
    last_outcome    text,
    delivered_at    timestamptz,
    given_up_at     timestamptz,
    CONSTRAINT endpoint_delivery_pkey PRIMARY KEY (endpoint_id, position)
);
-- The deliverers' claims: each endpoint's due deliveries, oldest first.
CREATE INDEX endpoint_delivery_due_idx ON endpoint_delivery (endpoint_id, due_at, position)
    WHERE due_at IS NOT NULL;
