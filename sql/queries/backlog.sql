-- How far the appliers are: captured callbacks not applied yet (the rows of apply_queue).

-- name: backlog
-- Waiting callbacks (failed ones apart) and the receive time of the oldest waiting one.
SELECT count(*) FILTER (WHERE q.error IS NULL) AS waiting,
       count(*) FILTER (WHERE q.error IS NOT NULL) AS failed,
       min(r.received_at) AS oldest_received_at
  FROM apply_queue q
  JOIN raw_callback r ON r.id = q.raw_callback_id;

-- name: failed_callbacks
-- Callbacks that failed to apply, oldest first, with their errors and next attempt.
SELECT r.id, r.kind, r.message_uuid, r.dispatch_uuid, r.received_at, q.attempts,
       q.error, q.apply_after AS retry_at
  FROM apply_queue q
  JOIN raw_callback r ON r.id = q.raw_callback_id
 WHERE q.error IS NOT NULL
 ORDER BY q.raw_callback_id
 LIMIT %(limit)s;

-- name: workflow_backlog
-- A workflow's callbacks not applied yet: its own, and its known messages' (linked or not).
SELECT count(*) FILTER (WHERE q.error IS NULL) AS waiting,
       count(*) FILTER (WHERE q.error IS NOT NULL) AS failed
  FROM raw_callback r
  JOIN apply_queue q ON q.raw_callback_id = r.id
 WHERE r.dispatch_uuid = %(id)s
    OR r.message_uuid IN (SELECT message_uuid FROM message WHERE dispatch_uuid = %(id)s);

-- name: message_backlog
-- A message's callbacks not applied yet: its statuses, and its workflow's final reports.
SELECT count(*) FILTER (WHERE q.error IS NULL) AS waiting,
       count(*) FILTER (WHERE q.error IS NOT NULL) AS failed
  FROM raw_callback r
  JOIN apply_queue q ON q.raw_callback_id = r.id
 WHERE r.message_uuid = %(id)s
    OR (r.kind = 'final_report'
        AND r.dispatch_uuid = (SELECT dispatch_uuid FROM message WHERE message_uuid = %(id)s));
