-- How far the appliers are: captured callbacks not applied yet (the rows of apply_queue).

-- name: backlog
-- Waiting callbacks (failed ones apart) and the receive time of the oldest waiting one.
SELECT count(*) FILTER (WHERE error IS NULL) AS waiting,
       count(*) FILTER (WHERE error IS NOT NULL) AS failed,
       min(received_at) AS oldest_received_at
  FROM apply_queue;

-- name: failed_callbacks
-- Callbacks that failed to apply, oldest first, with their errors and next attempt.
SELECT r.id, r.kind, r.message_uuid, r.dispatch_uuid, q.received_at, q.attempts,
       q.error, q.apply_after AS retry_at
  FROM (SELECT * FROM apply_queue
         WHERE error IS NOT NULL
         ORDER BY raw_callback_id
         LIMIT %(limit)s) q
  JOIN raw_callback r ON r.id = q.raw_callback_id
 ORDER BY q.raw_callback_id;

-- name: workflow_backlog
-- A workflow's callbacks not applied yet: its own, and its known messages' (linked or not). The workflow's few raw callbacks are found by index, then looked up in the queue (`?wait` asks every 20 ms, whatever the backlog).
SELECT count(*) FILTER (WHERE error IS NULL) AS waiting,
       count(*) FILTER (WHERE error IS NOT NULL) AS failed
  FROM apply_queue
 WHERE raw_callback_id IN (
       SELECT id FROM raw_callback WHERE dispatch_uuid = %(id)s
       UNION ALL
       SELECT r.id
         FROM message m
         JOIN raw_callback r ON r.message_uuid = m.message_uuid
        WHERE m.dispatch_uuid = %(id)s);

-- name: message_backlog
-- A message's callbacks not applied yet: its statuses, and its workflow's final reports.
SELECT count(*) FILTER (WHERE q.error IS NULL) AS waiting,
       count(*) FILTER (WHERE q.error IS NOT NULL) AS failed
  FROM raw_callback r
  JOIN apply_queue q ON q.raw_callback_id = r.id
 WHERE r.message_uuid = %(id)s
    OR (r.kind = 'final_report'
        AND r.dispatch_uuid = (SELECT dispatch_uuid FROM message WHERE message_uuid = %(id)s));
