-- name: upsert_rejected_callback
-- Keep a refused delivery; the same body refused again counts one more attempt.
INSERT INTO rejected_callback (kind, body, body_sha256, body_size, content_type, http_status,
                               reason, message, errors, first_received_at, last_received_at)
VALUES (%(kind)s, %(body)s, %(body_sha256)s, %(body_size)s, %(content_type)s, %(http_status)s,
        %(reason)s, %(message)s, %(errors)s, %(received_at)s, %(received_at)s)
ON CONFLICT ON CONSTRAINT rejected_callback_body_key DO UPDATE
   SET attempts = rejected_callback.attempts + 1,
       last_received_at = greatest(rejected_callback.last_received_at, excluded.last_received_at),
       content_type = excluded.content_type,
       http_status = excluded.http_status,
       reason = excluded.reason,
       message = excluded.message,
       errors = excluded.errors
RETURNING id;

-- name: list_reprocessable_rejects
-- Unresolved rejects whose body was kept, oldest first; failed authenticity is never replayed.
SELECT id, kind, body, content_type
  FROM rejected_callback
 WHERE resolved_at IS NULL
   AND body IS NOT NULL
   AND reason <> 'unauthorized'
   AND id > %(after_id)s
 ORDER BY id
 LIMIT %(limit)s;

-- name: resolve_reject
-- Mark a reject as recovered by the callback it became.
UPDATE rejected_callback
   SET resolved_at = %(now)s,
       raw_callback_id = %(raw_callback_id)s,
       reprocess_attempts = reprocess_attempts + 1,
       last_reprocessed_at = %(now)s
 WHERE id = %(id)s;

-- name: note_failed_reprocess
-- Record that a reject still fails, with today's reason.
UPDATE rejected_callback
   SET reprocess_attempts = reprocess_attempts + 1,
       last_reprocessed_at = %(now)s,
       http_status = %(http_status)s,
       reason = %(reason)s,
       message = %(message)s,
       errors = %(errors)s
 WHERE id = %(id)s;
