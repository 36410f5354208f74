-- name: get_dispatch
-- One workflow's row.
SELECT dispatch_uuid, template, status, reported_status, reported_at, reported_price,
       reported_currency, api
  FROM dispatch
 WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: get_message
-- One message's row.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, reported_statuses, price, currency, error_code, error_reason, error_at,
       api, item_number, items_total, client_ref
  FROM message
 WHERE message_uuid = %(message_uuid)s;

-- name: get_dispatch_discrepancies
-- Contradictions found in a workflow and in its messages: the first `limit`, and how many in all.
SELECT d.subject, d.subject_id, d.kind, d.detail, count(*) OVER () AS total
  FROM discrepancy d
 WHERE (d.subject = 'dispatch' AND d.subject_id = %(dispatch_uuid)s)
    OR (d.subject = 'message' AND d.subject_id IN (
           SELECT m.message_uuid FROM message m WHERE m.dispatch_uuid = %(dispatch_uuid)s))
 ORDER BY d.subject, d.subject_id, d.kind, d.detail
 LIMIT %(limit)s;

-- name: workflow_messages_page
-- A page of one workflow's messages in the order they were sent (failover.sent_order), after the message named.
SELECT m.message_uuid, m.dispatch_uuid, m.channel, m.to_type, m.to_id, m.to_number, m.from_type,
       m.from_id, m.from_number, m.submitted_at, m.delivered_at, m.read_at, m.rejected_at,
       m.undeliverable_at, m.reported_status, m.reported_statuses, m.price, m.currency,
       m.error_code, m.error_reason, m.error_at, m.api, m.item_number, m.items_total, m.client_ref
  FROM message m
 WHERE m.dispatch_uuid = %(dispatch_uuid)s
   AND (%(after)s::text IS NULL
        OR (coalesce(m.first_event_at, 'infinity'), m.message_uuid COLLATE "C")
           > (SELECT coalesce(a.first_event_at, 'infinity'), a.message_uuid COLLATE "C"
                FROM message a
               WHERE a.message_uuid = %(after)s AND a.dispatch_uuid = %(dispatch_uuid)s))
 ORDER BY coalesce(m.first_event_at, 'infinity'), m.message_uuid COLLATE "C"
 LIMIT %(limit)s;

-- name: count_workflow_messages
-- How many messages a workflow holds.
SELECT count(*) AS messages FROM message WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: is_workflow_message
-- Whether a message belongs to a workflow (a page's `after`).
SELECT 1 FROM message WHERE message_uuid = %(message_uuid)s AND dispatch_uuid = %(dispatch_uuid)s;

-- name: get_message_discrepancies
-- Contradictions found in one message.
SELECT subject, subject_id, kind, detail
  FROM discrepancy
 WHERE subject = 'message' AND subject_id = %(message_uuid)s
 ORDER BY kind, detail;

-- name: get_decision
-- What was decided for a workflow, and whether it has a definition.
SELECT d.decided_by, d.current_step, d.due_at, d.decided_at, d.winning_step, d.awaiting_since,
       w.steps AS definition_steps, w.source AS definition_source, w.api AS definition_api
  FROM dispatch d
  LEFT JOIN workflow_definition w USING (dispatch_uuid)
 WHERE d.dispatch_uuid = %(dispatch_uuid)s;

-- name: get_reconciliation
-- How a workflow's final report disagrees with its callbacks, as of now.
SELECT kind, detail FROM reconciliation
 WHERE dispatch_uuid = %(dispatch_uuid)s
 ORDER BY kind, detail;

-- name: get_definition
-- A workflow's stored definition.
SELECT api, source, request, steps, recorded_at FROM workflow_definition
 WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: list_overdue
-- Workflows where a failover, a step's outcome or the final report is later than allowed (migration 0012 says when).
SELECT dispatch_uuid, api, status, current_step, kind, since
  FROM overdue_workflows(%(cutoff)s, %(awaiting_cutoff)s)
 ORDER BY since, dispatch_uuid
 LIMIT %(limit)s;

-- name: count_overdue
-- How many workflows are overdue, by API and kind.
SELECT api, kind, count(*) AS workflows
  FROM overdue_workflows(%(cutoff)s, %(awaiting_cutoff)s)
 GROUP BY api, kind;

-- name: list_recent
-- The workflows whose latest event is the latest (of one API, or both); those with none yet last.
SELECT dispatch_uuid, api, status, decided_by, current_step, due_at, decided_at, reported_status,
       updated_at, last_event_at
  FROM dispatch
 WHERE %(api)s::text IS NULL OR api = %(api)s::text
 ORDER BY last_event_at DESC NULLS LAST, dispatch_uuid
 LIMIT %(limit)s;
