-- name: insert_raw_callback
-- Store an accepted callback; returns nothing when the same callback is already stored.
INSERT INTO raw_callback (kind, dedup_key, body, payload, content_type, message_uuid,
                          dispatch_uuid, event_at, received_at, last_received_at)
VALUES (%(kind)s, %(dedup_key)s, %(body)s, %(payload)s, %(content_type)s, %(message_uuid)s,
        %(dispatch_uuid)s, %(event_at)s, %(received_at)s, %(received_at)s)
ON CONFLICT ON CONSTRAINT raw_callback_dedup_key DO NOTHING
RETURNING id;

-- name: count_redelivery
-- Count one more delivery of an already stored callback.
UPDATE raw_callback
   SET deliveries = deliveries + 1,
       last_received_at = greatest(last_received_at, %(received_at)s)
 WHERE kind = %(kind)s AND dedup_key = %(dedup_key)s
RETURNING id;

-- name: ensure_dispatch
-- Create the row of a workflow seen for the first time; leave an existing one alone.
INSERT INTO dispatch (dispatch_uuid, first_received_at, updated_at)
VALUES (%(dispatch_uuid)s, %(received_at)s, %(received_at)s)
ON CONFLICT ON CONSTRAINT dispatch_pkey DO NOTHING;

-- name: lock_dispatch
-- Read a workflow's row, its definition and decision; hold the row until commit (NO KEY UPDATE lets messages keep referencing it).
SELECT d.dispatch_uuid, d.template, d.reported_status, d.reported_at, d.reported_price,
       d.reported_currency, d.status, d.decided_by, d.current_step, d.due_at, d.decided_at,
       d.winning_step, d.winning_channel, w.steps AS definition_steps
  FROM dispatch d
  LEFT JOIN workflow_definition w USING (dispatch_uuid)
 WHERE d.dispatch_uuid = %(dispatch_uuid)s
   FOR NO KEY UPDATE OF d;

-- name: save_dispatch
-- Write a workflow's new state after a transition.
UPDATE dispatch
   SET template = %(template)s,
       reported_status = %(reported_status)s,
       reported_at = %(reported_at)s,
       reported_price = %(reported_price)s,
       reported_currency = %(reported_currency)s,
       final_report_received_at = coalesce(final_report_received_at, %(final_report_received_at)s),
       updated_at = greatest(updated_at, %(received_at)s)
 WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: ensure_message
-- Create the row of a message seen for the first time; leave an existing one alone.
INSERT INTO message (message_uuid, first_received_at, updated_at)
VALUES (%(message_uuid)s, %(received_at)s, %(received_at)s)
ON CONFLICT ON CONSTRAINT message_pkey DO NOTHING;

-- name: lock_message
-- Read a message's row and hold it until commit.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, price, currency, error_code, error_reason, error_at
  FROM message
 WHERE message_uuid = %(message_uuid)s
   FOR NO KEY UPDATE;

-- name: save_message
-- Write a message's new state after a transition.
UPDATE message
   SET dispatch_uuid = %(dispatch_uuid)s,
       channel = %(channel)s,
       to_type = %(to_type)s,
       to_id = %(to_id)s,
       to_number = %(to_number)s,
       from_type = %(from_type)s,
       from_id = %(from_id)s,
       from_number = %(from_number)s,
       status = %(status)s,
       first_event_at = %(first_event_at)s,
       delivery_reached_at = %(delivery_reached_at)s,
       submitted_at = %(submitted_at)s,
       delivered_at = %(delivered_at)s,
       read_at = %(read_at)s,
       rejected_at = %(rejected_at)s,
       undeliverable_at = %(undeliverable_at)s,
       reported_status = %(reported_status)s,
       price = %(price)s,
       currency = %(currency)s,
       error_code = %(error_code)s,
       error_reason = %(error_reason)s,
       error_at = %(error_at)s,
       updated_at = greatest(updated_at, %(received_at)s)
 WHERE message_uuid = %(message_uuid)s;

-- name: insert_discrepancy
-- Record a contradiction once; the same one found again changes nothing.
INSERT INTO discrepancy (subject, subject_id, kind, detail, raw_callback_id, recorded_at)
VALUES (%(subject)s, %(subject_id)s, %(kind)s, %(detail)s, %(raw_callback_id)s, %(recorded_at)s)
ON CONFLICT ON CONSTRAINT discrepancy_key DO NOTHING;

-- name: find_message_dispatch
-- The workflow a message is known to belong to, if any (read without a lock).
SELECT dispatch_uuid FROM message WHERE message_uuid = %(message_uuid)s;

-- name: refresh_rollups
-- Recount a locked workflow's message rollups (for the analytics views); unchanged rows are not rewritten.
UPDATE dispatch d
   SET steps_tried = r.steps_tried,
       message_channels = r.message_channels,
       computed_cost = r.computed_cost,
       cost_currency = r.cost_currency,
       first_event_at = r.first_event_at
  FROM (SELECT count(*)::integer AS steps_tried,
               coalesce(array_agg(m.channel ORDER BY m.first_event_at NULLS LAST, m.message_uuid)
                          FILTER (WHERE m.channel IS NOT NULL), '{}') AS message_channels,
               sum(m.price) AS computed_cost,
               CASE WHEN min(m.currency) <> max(m.currency) THEN 'MIXED' ELSE min(m.currency) END
                   AS cost_currency,
               min(m.first_event_at) AS first_event_at
          FROM message m
         WHERE m.dispatch_uuid = %(dispatch_uuid)s) r
 WHERE d.dispatch_uuid = %(dispatch_uuid)s
   AND (d.steps_tried, d.message_channels, d.computed_cost, d.cost_currency, d.first_event_at)
       IS DISTINCT FROM
       (r.steps_tried, r.message_channels, r.computed_cost, r.cost_currency, r.first_event_at);

-- name: save_decision
-- Write what was decided for a workflow.
UPDATE dispatch
   SET status = %(status)s,
       decided_by = %(decided_by)s,
       current_step = %(current_step)s,
       due_at = %(due_at)s,
       decided_at = %(decided_at)s,
       winning_step = %(winning_step)s,
       winning_channel = %(winning_channel)s
 WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: clear_reconciliation
-- Forget a workflow's disagreements before writing the current ones.
DELETE FROM reconciliation WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: insert_reconciliation
-- Record one current disagreement between the final report and the callbacks.
INSERT INTO reconciliation (dispatch_uuid, kind, detail, recorded_at)
VALUES (%(dispatch_uuid)s, %(kind)s, %(detail)s, %(recorded_at)s);

-- name: upsert_definition
-- Store (or replace) a workflow's definition.
INSERT INTO workflow_definition (dispatch_uuid, source, request, steps, recorded_at)
VALUES (%(dispatch_uuid)s, %(source)s, %(request)s, %(steps)s, %(recorded_at)s)
ON CONFLICT ON CONSTRAINT workflow_definition_pkey DO UPDATE
   SET source = excluded.source,
       request = excluded.request,
       steps = excluded.steps,
       recorded_at = excluded.recorded_at;
