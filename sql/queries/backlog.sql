-- How far the appliers are: captured callbacks not applied yet.

-- name: backlog
-- Waiting callbacks (failed ones apart) and the receive time of the oldest waiting one.
SELECT count(*) FILTER (WHERE apply_error IS NULL) AS waiting,
       count(*) FILTER (WHERE apply_error IS NOT NULL) AS failed,
       min(received_at) AS oldest_received_at
  FROM raw_callback
 WHERE applied_at IS NULL;

-- name: failed_callbacks
-- Callbacks that failed to apply, oldest first, with their errors and next attempt.
SELECT id, kind, message_uuid, dispatch_uuid, received_at, apply_attempts AS attempts,
       apply_error AS error, apply_after AS retry_at
  FROM raw_callback
 WHERE applied_at IS NULL AND apply_error IS NOT NULL
 ORDER BY id
 LIMIT %(limit)s;

-- name: workflow_backlog
-- A workflow's callbacks not applied yet: its own, and its known messages' (linked or not).
SELECT count(*) FILTER (WHERE apply_error IS NULL) AS waiting,
       count(*) FILTER (WHERE apply_error IS NOT NULL) AS failed
  FROM raw_callback
 WHERE applied_at IS NULL
   AND (dispatch_uuid = %(id)s
        OR message_uuid IN (SELECT message_uuid FROM message WHERE dispatch_uuid = %(id)s));

-- name: message_backlog
-- A message's callbacks not applied yet: its statuses, and its workflow's final reports.
SELECT count(*) FILTER (WHERE apply_error IS NULL) AS waiting,
       count(*) FILTER (WHERE apply_error IS NOT NULL) AS failed
  FROM raw_callback
 WHERE applied_at IS NULL
   AND (message_uuid = %(id)s
        OR (kind = 'final_report'
            AND dispatch_uuid = (SELECT dispatch_uuid FROM message WHERE message_uuid = %(id)s)));
