-- The applier: claim captured callbacks, fold them into workflows and
-- messages, decide the workflows they touched. Locks are always taken in one
-- order: claimed raw callbacks (never waited for: SKIP LOCKED), then
-- workflows by id, then messages by id.

-- name: claim_callbacks
-- Take up to `limit` waiting callbacks that are due (received before `before`, if given), oldest first; rows another applier holds are skipped.
SELECT id, kind, body, received_at
  FROM raw_callback
 WHERE applied_at IS NULL
   AND (apply_after IS NULL OR apply_after <= %(now)s)
   AND (%(before)s::timestamptz IS NULL OR received_at < %(before)s::timestamptz)
 ORDER BY id
 LIMIT %(limit)s
   FOR NO KEY UPDATE SKIP LOCKED;

-- name: claim_own_callbacks
-- Take the waiting, due callbacks among those this process captured; rows another applier holds are skipped.
SELECT id, kind, received_at
  FROM raw_callback
 WHERE id = ANY(%(ids)s)
   AND applied_at IS NULL
   AND (apply_after IS NULL OR apply_after <= %(now)s)
 ORDER BY id
   FOR NO KEY UPDATE SKIP LOCKED;

-- name: claim_callback
-- Take one waiting callback by id, unless another applier holds it (applying a failed batch one by one).
SELECT id, kind, body, received_at
  FROM raw_callback
 WHERE id = %(id)s AND applied_at IS NULL
   FOR NO KEY UPDATE SKIP LOCKED;

-- name: mark_applied
-- The claimed callbacks are part of the state now.
UPDATE raw_callback
   SET applied_at = %(now)s, apply_error = NULL, apply_after = NULL
 WHERE id = ANY(%(ids)s);

-- name: mark_failed
-- A callback failed to apply: keep the error; try again after `first` seconds, doubled each failure up to `last`.
UPDATE raw_callback
   SET apply_attempts = apply_attempts + 1,
       apply_error = %(error)s,
       apply_after = %(now)s + least(%(first)s * power(2, least(apply_attempts, 30)), %(last)s)
                               * interval '1 second'
 WHERE id = %(id)s AND applied_at IS NULL
RETURNING id;

-- name: retry_failed_now
-- Make every failed callback due at once (after a fix: `dispatch-ledger apply --retry-failed`).
UPDATE raw_callback
   SET apply_after = NULL
 WHERE applied_at IS NULL AND apply_error IS NOT NULL;

-- name: message_dispatches
-- The workflows messages are known to belong to (read without locks, to know which workflows to lock).
SELECT message_uuid, dispatch_uuid
  FROM message
 WHERE message_uuid = ANY(%(ids)s) AND dispatch_uuid IS NOT NULL;

-- name: ensure_dispatches
-- Create the rows of workflows seen for the first time; leave existing ones alone.
INSERT INTO dispatch (dispatch_uuid, first_received_at, updated_at)
SELECT id, at, at FROM unnest(%(ids)s::text[], %(at)s::timestamptz[]) AS t(id, at)
ORDER BY id COLLATE "C"
ON CONFLICT ON CONSTRAINT dispatch_pkey DO NOTHING;

-- name: lock_dispatches
-- Read workflows' rows, definitions and decisions, locked in id order until commit (NO KEY UPDATE lets messages keep referencing them).
SELECT d.dispatch_uuid, d.template, d.reported_status, d.reported_at, d.reported_price,
       d.reported_currency, d.status, d.decided_by, d.current_step, d.due_at, d.decided_at,
       d.winning_step, d.winning_channel, d.awaiting_since, d.api, w.steps AS definition_steps,
       w.api AS definition_api
  FROM dispatch d
  LEFT JOIN workflow_definition w USING (dispatch_uuid)
 WHERE d.dispatch_uuid = ANY(%(ids)s)
 ORDER BY d.dispatch_uuid COLLATE "C"
   FOR NO KEY UPDATE OF d;

-- name: ensure_messages
-- Create the rows of messages seen for the first time; leave existing ones alone.
INSERT INTO message (message_uuid, first_received_at, updated_at)
SELECT id, at, at FROM unnest(%(ids)s::text[], %(at)s::timestamptz[]) AS t(id, at)
ORDER BY id COLLATE "C"
ON CONFLICT ON CONSTRAINT message_pkey DO NOTHING;

-- name: lock_messages
-- Read messages' rows, locked in id order until commit.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, price, currency, error_code, error_reason, error_at, api, item_number,
       items_total, client_ref
  FROM message
 WHERE message_uuid = ANY(%(ids)s)
 ORDER BY message_uuid COLLATE "C"
   FOR NO KEY UPDATE;

-- name: refresh_rollups
-- Recount locked workflows' message rollups (for the analytics views); unchanged rows are not rewritten.
UPDATE dispatch d
   SET steps_tried = r.steps_tried,
       message_channels = r.message_channels,
       computed_cost = r.computed_cost,
       cost_currency = r.cost_currency,
       first_event_at = r.first_event_at,
       last_event_at = r.last_event_at,
       items_total = r.items_total
  FROM unnest(%(ids)s::text[]) AS t(dispatch_uuid)
       CROSS JOIN LATERAL (
        SELECT count(*)::integer AS steps_tried,
               coalesce(array_agg(m.channel ORDER BY m.first_event_at NULLS LAST, m.message_uuid)
                          FILTER (WHERE m.channel IS NOT NULL), '{}') AS message_channels,
               sum(m.price) AS computed_cost,
               CASE WHEN min(m.currency) <> max(m.currency) THEN 'MIXED' ELSE min(m.currency) END
                   AS cost_currency,
               min(m.first_event_at) AS first_event_at,
               max(greatest(m.submitted_at, m.delivered_at, m.read_at, m.rejected_at,
                            m.undeliverable_at)) AS last_event_at,
               max(m.items_total) AS items_total
          FROM message m
         WHERE m.dispatch_uuid = t.dispatch_uuid) r
 WHERE d.dispatch_uuid = t.dispatch_uuid
   AND (d.steps_tried, d.message_channels, d.computed_cost, d.cost_currency, d.first_event_at,
        d.last_event_at, d.items_total)
       IS DISTINCT FROM
       (r.steps_tried, r.message_channels, r.computed_cost, r.cost_currency, r.first_event_at,
        r.last_event_at, r.items_total);

-- name: workflows_messages
-- The messages of locked workflows, each workflow's in the order they were sent.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, price, currency, error_code, error_reason, error_at, api, item_number,
       items_total, client_ref
  FROM message
 WHERE dispatch_uuid = ANY(%(ids)s)
 ORDER BY dispatch_uuid, first_event_at NULLS LAST, message_uuid;

-- name: clear_reconciliation
-- Forget workflows' disagreements before writing the current ones.
DELETE FROM reconciliation WHERE dispatch_uuid = ANY(%(ids)s);

-- name: save_dispatch
-- Write a workflow's new state after a transition.
UPDATE dispatch
   SET template = %(template)s,
       api = %(api)s,
       reported_status = %(reported_status)s,
       reported_at = %(reported_at)s,
       reported_price = %(reported_price)s,
       reported_currency = %(reported_currency)s,
       final_report_received_at = coalesce(final_report_received_at, %(final_report_received_at)s),
       updated_at = greatest(updated_at, %(received_at)s)
 WHERE dispatch_uuid = %(dispatch_uuid)s;

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
       api = %(api)s,
       item_number = %(item_number)s,
       items_total = %(items_total)s,
       client_ref = %(client_ref)s,
       updated_at = greatest(updated_at, %(received_at)s)
 WHERE message_uuid = %(message_uuid)s;

-- name: insert_discrepancy
-- Record a contradiction once; the same one found again changes nothing.
INSERT INTO discrepancy (subject, subject_id, kind, detail, raw_callback_id, recorded_at)
VALUES (%(subject)s, %(subject_id)s, %(kind)s, %(detail)s, %(raw_callback_id)s, %(recorded_at)s)
ON CONFLICT ON CONSTRAINT discrepancy_key DO NOTHING;

-- name: save_decision
-- Write what was decided for a workflow.
UPDATE dispatch
   SET status = %(status)s,
       decided_by = %(decided_by)s,
       current_step = %(current_step)s,
       due_at = %(due_at)s,
       decided_at = %(decided_at)s,
       winning_step = %(winning_step)s,
       winning_channel = %(winning_channel)s,
       awaiting_since = %(awaiting_since)s
 WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: insert_reconciliation
-- Record one current disagreement between the final report and the callbacks.
INSERT INTO reconciliation (dispatch_uuid, kind, detail, recorded_at)
VALUES (%(dispatch_uuid)s, %(kind)s, %(detail)s, %(recorded_at)s);

-- name: upsert_definition
-- Store (or replace) a workflow's definition.
INSERT INTO workflow_definition (dispatch_uuid, api, source, request, steps, recorded_at)
VALUES (%(dispatch_uuid)s, %(api)s, %(source)s, %(request)s, %(steps)s, %(recorded_at)s)
ON CONFLICT ON CONSTRAINT workflow_definition_pkey DO UPDATE
   SET api = excluded.api,
       source = excluded.source,
       request = excluded.request,
       steps = excluded.steps,
       recorded_at = excluded.recorded_at;
