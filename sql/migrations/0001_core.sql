-- 0001: raw callbacks, rejected deliveries, and the current state of workflows and messages.
--
-- Every constraint and index is named so that errors can be translated by name
-- and later migrations can refer to them.

-- Every accepted callback, exactly as received. Rows are never deleted or
-- edited by the service (retention is an operator's decision); only the
-- redelivery counter moves when the same callback arrives again.
CREATE TABLE raw_callback (
    id               bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT raw_callback_pkey PRIMARY KEY,
    kind             text        NOT NULL CONSTRAINT raw_callback_kind_check
                                 CHECK (kind IN ('message_status', 'final_report')),
    -- SHA-256 of the payload in canonical JSON: the same callback re-serialized
    -- with other spacing or key order is still the same callback.
    dedup_key        bytea       NOT NULL,
    body             bytea       NOT NULL,
    payload          jsonb       NOT NULL,
    content_type     text,
    message_uuid     text,
    dispatch_uuid    text,
    event_at         timestamptz NOT NULL,
    received_at      timestamptz NOT NULL,
    deliveries       integer     NOT NULL DEFAULT 1,
    last_received_at timestamptz NOT NULL,
    CONSTRAINT raw_callback_dedup_key UNIQUE (kind, dedup_key)
);
CREATE INDEX raw_callback_message_uuid_idx ON raw_callback (message_uuid)
    WHERE message_uuid IS NOT NULL;
CREATE INDEX raw_callback_dispatch_uuid_idx ON raw_callback (dispatch_uuid)
    WHERE dispatch_uuid IS NOT NULL;
CREATE INDEX raw_callback_received_at_idx ON raw_callback (received_at);

-- Every delivery that was refused, kept so that nothing is lost and a fixed
-- schema can recover it (`dispatch-ledger reprocess-rejects`).
CREATE TABLE rejected_callback (
    id                  bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT rejected_callback_pkey PRIMARY KEY,
    kind                text        NOT NULL CONSTRAINT rejected_callback_kind_check
                                    CHECK (kind IN ('message_status', 'final_report')),
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
    first_received_at   timestamptz NOT NULL,
    last_received_at    timestamptz NOT NULL,
    reprocess_attempts  integer     NOT NULL DEFAULT 0,
    last_reprocessed_at timestamptz,
    resolved_at         timestamptz,
    raw_callback_id     bigint CONSTRAINT rejected_callback_raw_callback_id_fkey
                               REFERENCES raw_callback (id),
    -- NULL hashes are distinct, so every unread (too large) body gets a row.
    CONSTRAINT rejected_callback_body_key UNIQUE (kind, body_sha256)
);
CREATE INDEX rejected_callback_unresolved_idx ON rejected_callback (id)
    WHERE resolved_at IS NULL;

-- One row per workflow (dispatch_uuid), created by the first callback that names it.
CREATE TABLE dispatch (
    dispatch_uuid            text        CONSTRAINT dispatch_pkey PRIMARY KEY,
    template                 text,
    -- Decided by this service: pending | completed | error.
    status                   text        NOT NULL DEFAULT 'pending'
                                         CONSTRAINT dispatch_status_check
                                         CHECK (status IN ('pending', 'completed', 'error')),
    -- What the final report said, kept beside the decision.
    reported_status          text        CONSTRAINT dispatch_reported_status_check
                                         CHECK (reported_status IN ('completed', 'error')),
    reported_at              timestamptz,
    reported_price           numeric,
    reported_currency        text,
    final_report_received_at timestamptz,
    first_received_at        timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,
    CONSTRAINT dispatch_reported_usage_check
        CHECK ((reported_price IS NULL) = (reported_currency IS NULL))
);

-- One row per message (message_uuid): its workflow, channel, and every status time.
CREATE TABLE message (
    message_uuid      text        CONSTRAINT message_pkey PRIMARY KEY,
    dispatch_uuid     text        CONSTRAINT message_dispatch_uuid_fkey
                                  REFERENCES dispatch (dispatch_uuid),
    channel           text        CONSTRAINT message_channel_check
                                  CHECK (channel IN ('sms', 'mms', 'messenger', 'viber_service_msg', 'whatsapp')),
    to_type           text,
    to_id             text,
    to_number         text,
    from_type         text,
    from_id           text,
    from_number       text,
    -- Current status by precedence: read > delivered > rejected = undeliverable > submitted.
    status            text        CONSTRAINT message_status_check
                                  CHECK (status IN ('submitted', 'delivered', 'read', 'rejected', 'undeliverable')),
    -- Event time (the callback's timestamp) of the first callback of each status.
    submitted_at      timestamptz,
    delivered_at      timestamptz,
    read_at           timestamptz,
    rejected_at       timestamptz,
    undeliverable_at  timestamptz,
    -- The status the final report listed for this message (no event time).
    reported_status   text        CONSTRAINT message_reported_status_check
                                  CHECK (reported_status IN ('submitted', 'delivered', 'read', 'rejected', 'undeliverable')),
    price             numeric     CONSTRAINT message_price_check CHECK (price >= 0),
    currency          text,
    error_code        integer,
    error_reason      text,
    error_at          timestamptz,
    first_received_at timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CONSTRAINT message_usage_check CHECK ((price IS NULL) = (currency IS NULL))
);
CREATE INDEX message_dispatch_uuid_idx ON message (dispatch_uuid);

-- Callbacks that contradict what is already known. The value that stands is
-- in the state tables; each row here is a value that did not.
CREATE TABLE discrepancy (
    id              bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT discrepancy_pkey PRIMARY KEY,
    subject         text        NOT NULL CONSTRAINT discrepancy_subject_check
                                CHECK (subject IN ('message', 'dispatch')),
    subject_id      text        NOT NULL,
    kind            text        NOT NULL,
    detail          text        NOT NULL,
    raw_callback_id bigint      CONSTRAINT discrepancy_raw_callback_id_fkey
                                REFERENCES raw_callback (id),
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT discrepancy_key UNIQUE (subject, subject_id, kind, detail)
);
