-- 0007: what the state machine decides about a message, stored for SQL to read.
--
-- app/state.py is where these rules live (first event time; when the message
-- reached delivery, read implying delivered). The service writes both with
-- every change, beside `status`, so that the views and queries read the
-- service's answer instead of restating the rule in SQL.
ALTER TABLE message
    ADD COLUMN first_event_at      timestamptz,
    ADD COLUMN delivery_reached_at timestamptz;

COMMENT ON COLUMN message.first_event_at IS 'Earliest event time of any of its statuses (app/state.py).';
COMMENT ON COLUMN message.delivery_reached_at IS 'When it reached delivery: the earlier of delivered and read, read implying delivered (app/state.py).';

-- The rows stored before this migration, filled once by the same rules; the
-- service keeps them current from here on.
UPDATE message
   SET first_event_at = least(submitted_at, delivered_at, read_at, rejected_at, undeliverable_at),
       delivery_reached_at = least(delivered_at, read_at);
