-- 0010: Messages API failover workflows beside Dispatch ones, in the same tables.
--
-- Messages v1 status webhooks are a third kind of callback. Their workflows
-- are rows of `dispatch` (the workflow table; `dispatch_uuid` holds the
-- Messages `workflow_id`), told apart by `api`. Their messages carry their
-- position in the workflow (`item_number` of `items_total`), which is how
-- they are decided: there is no final report.

ALTER TABLE raw_callback DROP CONSTRAINT raw_callback_kind_check;
ALTER TABLE raw_callback ADD CONSTRAINT raw_callback_kind_check
    CHECK (kind IN ('message_status', 'final_report', 'messages_status'));
ALTER TABLE rejected_callback DROP CONSTRAINT rejected_callback_kind_check;
ALTER TABLE rejected_callback ADD CONSTRAINT rejected_callback_kind_check
    CHECK (kind IN ('message_status', 'final_report', 'messages_status'));

-- Each API's own channel names are kept as it sent them (`viber_service` is
-- the Messages API's name for Dispatch's `viber_service_msg`; `rcs` is new);
-- the analytics views map them to one set (sql/README.md).
ALTER TABLE message DROP CONSTRAINT message_channel_check;
ALTER TABLE message ADD CONSTRAINT message_channel_check
    CHECK (channel IN ('sms', 'mms', 'messenger', 'viber_service_msg', 'whatsapp',
                       'rcs', 'viber_service'));

-- Everything stored so far came from Dispatch: a constant default, dropped
-- at once, fills existing rows without rewriting the table.
ALTER TABLE message ADD COLUMN api text DEFAULT 'dispatch'
    CONSTRAINT message_api_check CHECK (api IN ('dispatch', 'messages'));
ALTER TABLE message ALTER COLUMN api DROP DEFAULT;
ALTER TABLE message
    ADD COLUMN item_number integer CONSTRAINT message_item_number_check CHECK (item_number >= 1),
    ADD COLUMN items_total integer CONSTRAINT message_items_total_check CHECK (items_total >= 1),
    ADD COLUMN client_ref  text;
COMMENT ON COLUMN message.api IS 'The API whose callbacks reported the message: dispatch or messages.';
COMMENT ON COLUMN message.item_number IS 'Messages API failover: the message''s position in its workflow (1-based).';
COMMENT ON COLUMN message.items_total IS 'Messages API failover: how many messages its workflow has.';
COMMENT ON COLUMN message.client_ref IS 'Messages API: the client_ref the sender gave the message.';

ALTER TABLE dispatch ADD COLUMN api text DEFAULT 'dispatch'
    CONSTRAINT dispatch_api_check CHECK (api IN ('dispatch', 'messages'));
ALTER TABLE dispatch ALTER COLUMN api DROP DEFAULT;
ALTER TABLE dispatch
    -- While the last step (a Messages item: any item) waits for its outcome,
    -- since when; how long that may last is the operator's setting
    -- (LAST_STEP_TIMEOUT_SECONDS), applied when reading.
    ADD COLUMN awaiting_since timestamptz;
COMMENT ON COLUMN dispatch.api IS 'The API that ran the workflow: dispatch, or messages (Messages API failover).';
COMMENT ON COLUMN dispatch.awaiting_since IS 'While pending on a step without a deadline: when its message was submitted.';

ALTER TABLE dispatch DROP CONSTRAINT dispatch_decided_by_check;
ALTER TABLE dispatch ADD CONSTRAINT dispatch_decided_by_check
    CHECK (decided_by IN ('definition', 'final_report', 'callbacks'));

ALTER TABLE workflow_definition
    ADD COLUMN api text NOT NULL DEFAULT 'dispatch'
                   CONSTRAINT workflow_definition_api_check CHECK (api IN ('dispatch', 'messages'));

CREATE INDEX dispatch_awaiting_since_idx ON dispatch (awaiting_since)
    WHERE status = 'pending' AND awaiting_since IS NOT NULL;
