-- The applier: claim captured callbacks, fold them into workflows and
-- messages, decide the workflows they touched. Locks are always taken in one
-- order: claimed queue rows (never waited for: SKIP LOCKED), then workflows
-- by id, then messages by id. A claim deletes the queue rows in the applier's
-- transaction: committed, they are applied; rolled back, they wait again.

-- name: claim_callbacks
-- Take up to `limit` waiting callbacks that are due (received before `before`, if given), oldest first, out of the queue; rows another applier holds are skipped. Rolled back, they are queued again.
WITH claimed AS (
    DELETE FROM apply_queue
     WHERE raw_callback_id IN (
           SELECT raw_callback_id
             FROM apply_queue
            WHERE (apply_after IS NULL OR apply_after <= %(now)s)
              AND (%(before)s::timestamptz IS NULL OR received_at < %(before)s::timestamptz)
            ORDER BY raw_callback_id
            LIMIT %(limit)s
              FOR UPDATE SKIP LOCKED)
    RETURNING raw_callback_id, received_at, event_at, attempts)
SELECT r.id, r.kind, r.body, c.received_at, c.event_at, c.attempts
  FROM claimed c
  JOIN raw_callback r ON r.id = c.raw_callback_id AND r.event_at = c.event_at
 ORDER BY r.id;

-- name: due_callbacks
-- The ids of up to `limit` waiting callbacks that are due, oldest first (read only: no claim).
SELECT raw_callback_id AS id
  FROM apply_queue
 WHERE apply_after IS NULL OR apply_after <= %(now)s
 ORDER BY raw_callback_id
 LIMIT %(limit)s;

-- name: claim_own_callbacks
-- Take the waiting, due callbacks among those this process captured (their events are known: no bodies); rows another applier holds are skipped.
WITH claimed AS (
    DELETE FROM apply_queue
     WHERE raw_callback_id IN (
           SELECT raw_callback_id
             FROM apply_queue
            WHERE raw_callback_id = ANY(%(ids)b)
              AND (apply_after IS NULL OR apply_after <= %(now)s)
              FOR UPDATE SKIP LOCKED)
    RETURNING raw_callback_id, received_at, event_at, attempts)
SELECT r.id, r.kind, c.received_at, c.event_at, c.attempts
  FROM claimed c
  JOIN raw_callback r ON r.id = c.raw_callback_id AND r.event_at = c.event_at
 ORDER BY r.id;

-- name: claim_callback
-- Take one waiting callback by id, unless another applier holds it (applying a failed batch one by one).
WITH claimed AS (
    DELETE FROM apply_queue
     WHERE raw_callback_id IN (
           SELECT raw_callback_id FROM apply_queue WHERE raw_callback_id = %(id)s
              FOR UPDATE SKIP LOCKED)
    RETURNING raw_callback_id, received_at, event_at, attempts)
SELECT r.id, r.kind, r.body, c.received_at, c.event_at, c.attempts
  FROM claimed c
  JOIN raw_callback r ON r.id = c.raw_callback_id AND r.event_at = c.event_at;

-- name: queue_again
-- Put a callback claimed in this transaction back in the queue, with its attempts so far (to be marked failed).
INSERT INTO apply_queue (raw_callback_id, received_at, event_at, attempts)
VALUES (%(id)s, %(received_at)s, %(event_at)s, %(attempts)s);

-- name: mark_failed
-- A queued callback failed to apply: keep the error; try again after `first` seconds, doubled each failure up to `last`.
UPDATE apply_queue
   SET attempts = attempts + 1,
       error = %(error)s,
       apply_after = %(now)s + least(%(first)s * power(2, least(attempts, 30)), %(last)s)
                               * interval '1 second'
 WHERE raw_callback_id = %(id)s
RETURNING raw_callback_id;

-- name: retry_failed_now
-- Make every failed callback due at once (after a fix: `dispatch-ledger apply --retry-failed`).
UPDATE apply_queue
   SET apply_after = NULL
 WHERE error IS NOT NULL;

-- name: message_dispatches
-- The workflows messages are known to belong to (read without locks, to know which workflows to lock).
SELECT message_uuid, dispatch_uuid
  FROM message
 WHERE message_uuid = ANY(%(ids)b) AND dispatch_uuid IS NOT NULL;

-- name: ensure_dispatches
-- Create the rows of workflows seen for the first time; leave existing ones alone.
INSERT INTO dispatch (dispatch_uuid, first_received_at, updated_at)
SELECT id, at, at FROM unnest(%(ids)b::text[], %(at)b::timestamptz[]) AS t(id, at)
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
 WHERE d.dispatch_uuid = ANY(%(ids)b)
 ORDER BY d.dispatch_uuid COLLATE "C"
   FOR NO KEY UPDATE OF d;

-- name: ensure_messages
-- Create the rows of messages seen for the first time; leave existing ones alone.
INSERT INTO message (message_uuid, first_received_at, updated_at)
SELECT id, at, at FROM unnest(%(ids)b::text[], %(at)b::timestamptz[]) AS t(id, at)
ORDER BY id COLLATE "C"
ON CONFLICT ON CONSTRAINT message_pkey DO NOTHING;

-- name: lock_messages
-- Read messages' rows, locked in id order until commit.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, reported_statuses, price, currency, error_code, error_reason, error_at,
       api, item_number, items_total, client_ref
  FROM message
 WHERE message_uuid = ANY(%(ids)b)
 ORDER BY message_uuid COLLATE "C"
   FOR NO KEY UPDATE;

-- name: workflows_messages
-- Of locked workflows, the messages that can hold a step (failover.MOST_STEPS), in the order sent.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, reported_statuses, price, currency, error_code, error_reason, error_at,
       api, item_number, items_total, client_ref
  FROM (SELECT m.*,
               -- A step takes the first message of its item number, or the n-th of
               -- its channel: failover.assign's order (by event time, then id).
               row_number() OVER (
                   PARTITION BY m.dispatch_uuid, m.item_number,
                                CASE WHEN m.item_number IS NULL THEN m.channel END
                   ORDER BY m.first_event_at NULLS LAST, m.message_uuid COLLATE "C") AS place
          FROM message m
         WHERE m.dispatch_uuid = ANY(%(ids)b)) m
 WHERE (m.item_number IS NULL AND m.place <= %(steps)s)
    OR (m.item_number BETWEEN 1 AND %(steps)s AND m.place = 1)
 ORDER BY dispatch_uuid, first_event_at NULLS LAST, message_uuid;

-- name: workflows_totals
-- Of locked workflows, what all their messages add up to (failover.Totals): how many, prices per currency, items claimed.
WITH priced AS (
    SELECT dispatch_uuid, currency, sum(price) AS total
      FROM message
     WHERE dispatch_uuid = ANY(%(ids)b) AND price IS NOT NULL
     GROUP BY dispatch_uuid, currency
)
SELECT m.dispatch_uuid,
       count(*) AS messages,
       coalesce(greatest(max(m.items_total) FILTER (WHERE m.items_total <= %(steps)s),
                         max(m.item_number) FILTER (WHERE m.item_number <= %(steps)s)), 0) AS items,
       (SELECT array_agg(p.currency ORDER BY p.currency) FROM priced p
         WHERE p.dispatch_uuid = m.dispatch_uuid) AS currencies,
       (SELECT array_agg(p.total ORDER BY p.currency) FROM priced p
         WHERE p.dispatch_uuid = m.dispatch_uuid) AS totals
  FROM message m
 WHERE m.dispatch_uuid = ANY(%(ids)b)
 GROUP BY m.dispatch_uuid;

-- name: clear_reconciliation
-- Forget workflows' disagreements before writing the current ones.
DELETE FROM reconciliation WHERE dispatch_uuid = ANY(%(ids)b);

-- name: save_messages
-- Write messages' new states after their transitions (one array per column, an element per message).
UPDATE message m
   SET dispatch_uuid = v.dispatch_uuid,
       channel = v.channel,
       to_type = v.to_type,
       to_id = v.to_id,
       to_number = v.to_number,
       from_type = v.from_type,
       from_id = v.from_id,
       from_number = v.from_number,
       status = v.status,
       first_event_at = v.first_event_at,
       delivery_reached_at = v.delivery_reached_at,
       submitted_at = v.submitted_at,
       delivered_at = v.delivered_at,
       read_at = v.read_at,
       rejected_at = v.rejected_at,
       undeliverable_at = v.undeliverable_at,
       reported_status = v.reported_status,
       reported_statuses = v.reported_statuses::text[],
       price = v.price,
       currency = v.currency,
       error_code = v.error_code,
       error_reason = v.error_reason,
       error_at = v.error_at,
       api = v.api,
       item_number = v.item_number,
       items_total = v.items_total,
       client_ref = v.client_ref,
       updated_at = greatest(m.updated_at, v.received_at)
  FROM unnest(%(message_uuid)b::text[], %(dispatch_uuid)b::text[], %(channel)b::text[],
              %(to_type)b::text[], %(to_id)b::text[], %(to_number)b::text[],
              %(from_type)b::text[], %(from_id)b::text[], %(from_number)b::text[],
              %(status)b::text[], %(first_event_at)b::timestamptz[],
              %(delivery_reached_at)b::timestamptz[], %(submitted_at)b::timestamptz[],
              %(delivered_at)b::timestamptz[], %(read_at)b::timestamptz[],
              %(rejected_at)b::timestamptz[], %(undeliverable_at)b::timestamptz[],
              %(reported_status)b::text[], %(reported_statuses)b::text[],
              %(price)b::numeric[], %(currency)b::text[], %(error_code)b::integer[], %(error_reason)b::text[], %(error_at)b::timestamptz[],
              %(api)b::text[], %(item_number)b::integer[], %(items_total)b::integer[],
              %(client_ref)b::text[], %(received_at)b::timestamptz[])
       AS v(message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type,
            from_id, from_number, status, first_event_at, delivery_reached_at, submitted_at,
            delivered_at, read_at, rejected_at, undeliverable_at, reported_status,
            reported_statuses, price, currency, error_code, error_reason, error_at, api,
            item_number, items_total, client_ref, received_at)
 WHERE m.message_uuid = v.message_uuid;

-- name: insert_discrepancies
-- Record contradictions once each (one array per column); one found again changes nothing. Returns those recorded now.
INSERT INTO discrepancy (subject, subject_id, kind, detail, raw_callback_id, recorded_at)
SELECT * FROM unnest(%(subject)b::text[], %(subject_id)b::text[], %(kind)b::text[],
                     %(detail)b::text[], %(raw_callback_id)b::bigint[],
                     %(recorded_at)b::timestamptz[])
ON CONFLICT ON CONSTRAINT discrepancy_key DO NOTHING
RETURNING subject, subject_id, kind, detail;

-- name: save_workflows
-- Write locked workflows' rows once (one array per column, an element per workflow): their states, decisions, and rollups recounted from their messages (for the analytics views). updated_at moves only with `received_at` (NULL: the row's own state did not change); a row nothing changed is not rewritten.
UPDATE dispatch d
   SET template = v.template,
       api = v.api,
       reported_status = v.reported_status,
       reported_at = v.reported_at,
       reported_price = v.reported_price,
       reported_currency = v.reported_currency,
       final_report_received_at = coalesce(d.final_report_received_at, v.final_report_received_at),
       updated_at = greatest(d.updated_at, v.received_at),
       status = v.status,
       decided_by = v.decided_by,
       current_step = v.current_step,
       due_at = v.due_at,
       decided_at = v.decided_at,
       winning_step = v.winning_step,
       winning_channel = v.winning_channel,
       awaiting_since = v.awaiting_since,
       steps_tried = r.steps_tried,
       message_channels = r.message_channels,
       computed_cost = r.computed_cost,
       cost_currency = r.cost_currency,
       first_event_at = r.first_event_at,
       last_event_at = r.last_event_at,
       items_total = r.items_total
  FROM unnest(%(dispatch_uuid)b::text[], %(template)b::text[], %(api)b::text[],
              %(reported_status)b::text[], %(reported_at)b::timestamptz[],
              %(reported_price)b::numeric[], %(reported_currency)b::text[],
              %(final_report_received_at)b::timestamptz[], %(received_at)b::timestamptz[],
              %(status)b::text[], %(decided_by)b::text[], %(current_step)b::integer[],
              %(due_at)b::timestamptz[], %(decided_at)b::timestamptz[],
              %(winning_step)b::integer[], %(winning_channel)b::text[],
              %(awaiting_since)b::timestamptz[])
       AS v(dispatch_uuid, template, api, reported_status, reported_at, reported_price,
            reported_currency, final_report_received_at, received_at, status, decided_by,
            current_step, due_at, decided_at, winning_step, winning_channel, awaiting_since)
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
         WHERE m.dispatch_uuid = v.dispatch_uuid) r
 WHERE d.dispatch_uuid = v.dispatch_uuid
   AND (d.template, d.api, d.reported_status, d.reported_at, d.reported_price,
        d.reported_currency, d.final_report_received_at, d.updated_at,
        d.status, d.decided_by, d.current_step, d.due_at, d.decided_at, d.winning_step,
        d.winning_channel, d.awaiting_since,
        d.steps_tried, d.message_channels, d.computed_cost, d.cost_currency, d.first_event_at,
        d.last_event_at, d.items_total)
       IS DISTINCT FROM
       (v.template, v.api, v.reported_status, v.reported_at, v.reported_price,
        v.reported_currency, coalesce(d.final_report_received_at, v.final_report_received_at),
        greatest(d.updated_at, v.received_at),
        v.status, v.decided_by, v.current_step, v.due_at, v.decided_at, v.winning_step,
        v.winning_channel, v.awaiting_since,
        r.steps_tried, r.message_channels, r.computed_cost, r.cost_currency, r.first_event_at,
        r.last_event_at, r.items_total);

-- name: insert_reconciliations
-- Record workflows' current disagreements between the final report and the callbacks (one array per column).
INSERT INTO reconciliation (dispatch_uuid, kind, detail, recorded_at)
SELECT * FROM unnest(%(dispatch_uuid)b::text[], %(kind)b::text[], %(detail)b::text[],
                     %(recorded_at)b::timestamptz[]);

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

-- name: recorded_findings
-- Locked workflows' current disagreements with their final reports (to tell the new ones).
SELECT dispatch_uuid, kind, detail FROM reconciliation WHERE dispatch_uuid = ANY(%(ids)b);
