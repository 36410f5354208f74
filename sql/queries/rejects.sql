-- name: charge_reject_window
-- Count a refused delivery in its reason's hour; `bytes` is the hour's total, this one included.
INSERT INTO reject_window AS w (reason, window_start, deliveries, bytes, dropped)
VALUES (%(reason)s, %(window_start)s, 1, %(charge)s,
        (NOT %(always_keep)s AND %(charge)s > %(budget)s)::int)
ON CONFLICT ON CONSTRAINT reject_window_pkey DO UPDATE
   SET deliveries = w.deliveries + 1,
       bytes = w.bytes + excluded.bytes,
       dropped = w.dropped + (NOT %(always_keep)s AND w.bytes + excluded.bytes > %(budget)s)::int
RETURNING bytes, dropped;

-- name: hold_rejected_body
-- Let one session at a time keep a given refused body: across weekly partitions no unique key can tell it was kept before.
SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(kind)s || encode(%(body_sha256)s, 'hex')));

-- name: count_reject_again
-- The same body refused again: one more attempt on the row that kept it first (in whichever week that was).
UPDATE rejected_callback
   SET attempts = attempts + 1,
       last_received_at = greatest(last_received_at, %(received_at)s),
       content_type = %(content_type)s,
       http_status = %(http_status)s,
       reason = %(reason)s,
       message = %(message)s,
       errors = %(errors)s,
       -- A new token joins the latest few (the same body may come with several).
       tokens = CASE
           WHEN %(token)s::text IS NULL OR %(token)s::text = ANY (tokens) THEN tokens
           ELSE (tokens || %(token)s::text)[greatest(1, cardinality(tokens) - 6):]
       END
 WHERE kind = %(kind)s AND body_sha256 = %(body_sha256)s
RETURNING id;

-- name: keep_rejected_callback
-- Keep a refused delivery not kept before.
INSERT INTO rejected_callback (kind, body, body_sha256, body_size, content_type, http_status,
                               reason, message, errors, first_received_at, last_received_at,
                               tokens)
VALUES (%(kind)s, %(body)s, %(body_sha256)s, %(body_size)s, %(content_type)s, %(http_status)s,
        %(reason)s, %(message)s, %(errors)s, %(received_at)s, %(received_at)s,
        CASE WHEN %(token)s::text IS NULL THEN '{}'::text[] ELSE ARRAY[%(token)s::text] END)
RETURNING id;

-- name: list_reprocessable_rejects
-- Unresolved rejects whose body was kept, oldest first (authenticity is checked again by the caller).
SELECT id, kind, body, content_type, reason, tokens
  FROM rejected_callback
 WHERE resolved_at IS NULL
   AND body IS NOT NULL
   AND id > %(after_id)s
 ORDER BY id
 LIMIT %(limit)s;

-- name: count_unresolved_rejects
-- How many kept rejects are not recovered (what reprocessing leaves for an operator).
SELECT count(*) AS remaining FROM rejected_callback WHERE resolved_at IS NULL;

-- name: find_raw_callback
-- The stored callback with this content, if any (a kept reject that has since arrived whole).
SELECT id FROM raw_callback
 WHERE kind = %(kind)s AND dedup_key = %(dedup_key)s AND event_at = %(event_at)s;

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

-- name: note_crashed_reprocess
-- Record that replaying a reject failed inside the service; its reason (and so its checks) stays.
UPDATE rejected_callback
   SET reprocess_attempts = reprocess_attempts + 1,
       last_reprocessed_at = %(now)s,
       message = %(message)s
 WHERE id = %(id)s;
