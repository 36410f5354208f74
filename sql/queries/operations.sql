-- name: hold_raw_log
-- Try to become the one command that rewrites the state or deletes from the raw log, for this session.
SELECT pg_try_advisory_lock(%(key)s) AS held;

-- name: hold_raw_log_for_transaction
-- The same exclusion, for this transaction only (a rebuild is one transaction).
SELECT pg_try_advisory_xact_lock(%(key)s) AS held;

-- name: takes_writes
-- Whether this server takes writes now: not a standby, nor set read-only (readiness).
SELECT current_setting('transaction_read_only') = 'off' AS takes_writes;

-- name: state_candidate_table
-- Where a prune of the state notes the workflows it will consider, for this session, in key order.
CREATE TEMPORARY TABLE state_candidate (dispatch_uuid text COLLATE "C" PRIMARY KEY);

-- name: state_candidates
-- Note, in one pass over the workflows alone, the decided ones not changed since the cutoff: more than a prune may take (state_to_prune, the rule, asks their messages too, a batch at a time).
INSERT INTO state_candidate (dispatch_uuid)
SELECT dispatch_uuid FROM dispatch WHERE status <> 'pending' AND updated_at < %(cutoff)s;

-- name: state_candidates_after
-- The next `batch` noted candidates after `after`, in key order.
SELECT dispatch_uuid FROM state_candidate
 WHERE dispatch_uuid > %(after)s
 ORDER BY dispatch_uuid
 LIMIT %(batch)s;

-- name: state_to_prune
-- Of the candidates, those still decided and unchanged since the cutoff (nor any of their messages), locked in id order; those an applier holds are left for the next prune.
SELECT d.dispatch_uuid
  FROM dispatch d
 WHERE d.dispatch_uuid = ANY(%(candidates)b)
   AND d.status <> 'pending'
   AND d.updated_at < %(cutoff)s
   AND NOT EXISTS (SELECT FROM message m
                    WHERE m.dispatch_uuid = d.dispatch_uuid AND m.updated_at >= %(cutoff)s)
 ORDER BY d.dispatch_uuid COLLATE "C"
   FOR UPDATE SKIP LOCKED;

-- name: prune_state_raw_of_workflows
-- Delete the raw callbacks naming pruned workflows (none still queued), so that no rebuild brings them back. (Apart from those naming their messages: one condition per statement, so that each week is read through its index, not whole.)
DELETE FROM raw_callback r
 WHERE r.dispatch_uuid = ANY(%(ids)b)
   AND NOT EXISTS (SELECT FROM apply_queue q WHERE q.raw_callback_id = r.id);

-- name: prune_state_raw_of_messages
-- Delete the raw callbacks naming pruned workflows' messages (none still queued).
DELETE FROM raw_callback r
 WHERE r.message_uuid = ANY(ARRAY(SELECT m.message_uuid FROM message m
                                   WHERE m.dispatch_uuid = ANY(%(ids)b)))
   AND NOT EXISTS (SELECT FROM apply_queue q WHERE q.raw_callback_id = r.id);

-- name: prune_state_discrepancies
-- Delete what callbacks disagreed on about pruned workflows and their messages.
DELETE FROM discrepancy
 WHERE (subject = 'dispatch' AND subject_id = ANY(%(ids)b))
    OR (subject = 'message' AND subject_id IN (SELECT m.message_uuid FROM message m
                                               WHERE m.dispatch_uuid = ANY(%(ids)b)));

-- name: prune_state_reconciliation
-- Delete pruned workflows' disagreements with their final reports.
DELETE FROM reconciliation WHERE dispatch_uuid = ANY(%(ids)b);

-- name: prune_state_definitions
-- Delete pruned workflows' definitions (their numbers and texts with them).
DELETE FROM workflow_definition WHERE dispatch_uuid = ANY(%(ids)b);

-- name: prune_state_events
-- Delete pruned workflows' events, their deliveries still to be sent, and their overdue notices.
WITH gone AS (
    DELETE FROM workflow_event WHERE dispatch_uuid = ANY(%(ids)b) RETURNING position
), undelivered AS (
    DELETE FROM endpoint_delivery WHERE position IN (SELECT position FROM gone)
)
DELETE FROM overdue_notice WHERE dispatch_uuid = ANY(%(ids)b);

-- name: prune_state_messages
-- Delete pruned workflows' messages.
DELETE FROM message WHERE dispatch_uuid = ANY(%(ids)b);

-- name: prune_state_workflows
-- Delete pruned workflows themselves.
DELETE FROM dispatch WHERE dispatch_uuid = ANY(%(ids)b);
