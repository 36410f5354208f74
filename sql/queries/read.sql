-- name: get_dispatch
-- One workflow's row.
SELECT dispatch_uuid, template, status, reported_status, reported_at, reported_price,
       reported_currency
  FROM dispatch
 WHERE dispatch_uuid = %(dispatch_uuid)s;

-- name: get_dispatch_messages
-- A workflow's messages in the order they were sent.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, price, currency, error_code, error_reason, error_at
  FROM message
 WHERE dispatch_uuid = %(dispatch_uuid)s
 ORDER BY least(submitted_at, delivered_at, read_at, rejected_at, undeliverable_at) NULLS LAST,
          message_uuid;

-- name: get_message
-- One message's row.
SELECT message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type, from_id,
       from_number, submitted_at, delivered_at, read_at, rejected_at, undeliverable_at,
       reported_status, price, currency, error_code, error_reason, error_at
  FROM message
 WHERE message_uuid = %(message_uuid)s;

-- name: get_dispatch_discrepancies
-- Contradictions found in a workflow and in its messages.
SELECT d.subject, d.subject_id, d.kind, d.detail
  FROM discrepancy d
 WHERE (d.subject = 'dispatch' AND d.subject_id = %(dispatch_uuid)s)
    OR (d.subject = 'message' AND d.subject_id IN (
           SELECT m.message_uuid FROM message m WHERE m.dispatch_uuid = %(dispatch_uuid)s))
 ORDER BY d.subject, d.subject_id, d.kind, d.detail;

-- name: get_message_discrepancies
-- Contradictions found in one message.
SELECT subject, subject_id, kind, detail
  FROM discrepancy
 WHERE subject = 'message' AND subject_id = %(message_uuid)s
 ORDER BY kind, detail;
