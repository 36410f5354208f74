-- name: prune_raw_batch
-- Delete up to `batch` applied raw callbacks received before the cutoff, oldest first (queued ones stay).
DELETE FROM raw_callback
 WHERE id IN (SELECT id FROM raw_callback r
               WHERE received_at < %(cutoff)s
                 AND NOT EXISTS (SELECT FROM apply_queue q WHERE q.raw_callback_id = r.id)
               ORDER BY id
               LIMIT %(batch)s);

-- name: hold_raw_log
-- Try to become the one command that rewrites the state or deletes from the raw log, for this session.
SELECT pg_try_advisory_lock(%(key)s) AS held;

-- name: hold_raw_log_for_transaction
-- The same exclusion, for this transaction only (a rebuild is one transaction).
SELECT pg_try_advisory_xact_lock(%(key)s) AS held;

-- name: prune_rejects_batch
-- Delete up to `batch` rejects last received before the cutoff: resolved ones, and unresolved ones only when asked.
DELETE FROM rejected_callback
 WHERE id IN (SELECT id FROM rejected_callback
               WHERE last_received_at < %(cutoff)s
                 AND (resolved_at IS NOT NULL OR %(unresolved)s)
               ORDER BY id
               LIMIT %(batch)s);

-- name: takes_writes
-- Whether this server takes writes now: not a standby, nor set read-only (readiness).
SELECT current_setting('transaction_read_only') = 'off' AS takes_writes;
