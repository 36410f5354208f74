-- name: raw_log_pruned
-- The latest cutoff before which raw callbacks were pruned, if any were.
SELECT max(cutoff) AS cutoff FROM raw_log_prune;

-- name: record_raw_log_prune
-- Note that raw callbacks before a cutoff are being deleted (a rebuild would lose what they said).
INSERT INTO raw_log_prune (pruned_at, cutoff, deleted) VALUES (%(now)s, %(cutoff)s, %(deleted)s)
RETURNING id;

-- name: count_raw_log_prune
-- Add a later batch's deletions to a prune's record.
UPDATE raw_log_prune SET deleted = deleted + %(deleted)s WHERE id = %(id)s;

-- name: lock_for_rebuild
-- Keep appliers and definitions off the state until the rebuild commits (readers and captures go on).
SET LOCAL lock_timeout = '30s';
LOCK TABLE dispatch, message, discrepancy, reconciliation, workflow_definition IN EXCLUSIVE MODE;

-- name: clear_state_for_rebuild
-- Keep the definitions aside, then empty every table derived from the log and the definitions.
CREATE TEMP TABLE rebuild_definition ON COMMIT DROP AS SELECT * FROM workflow_definition;
DELETE FROM discrepancy;
DELETE FROM reconciliation;
DELETE FROM workflow_definition;
DELETE FROM message;
DELETE FROM dispatch;

-- name: definitions_to_rebuild
-- The definitions kept aside, in the order they were recorded.
SELECT dispatch_uuid, api, source, request, recorded_at
  FROM rebuild_definition
 ORDER BY recorded_at, dispatch_uuid;

-- name: raw_callbacks_page
-- The next raw callbacks to apply again, in the order they were stored.
SELECT id, kind, body, received_at
  FROM raw_callback
 WHERE id > %(after_id)s
 ORDER BY id
 LIMIT %(limit)s;

-- name: raw_callback_ids
-- The raw log's first and last ids (how far a rebuild is); each week's key finds its own.
SELECT min(id) AS first, max(id) AS last FROM raw_callback;

-- name: keep_statuses_for_rebuild
-- Keep each workflow's decided status aside, so that a rebuild tells only the outcomes it changes.
CREATE TEMP TABLE rebuild_status ON COMMIT DROP AS SELECT dispatch_uuid, status FROM dispatch;
-- Keyed: the outcomes changed are told a page at a time, each page a range of the key.
ALTER TABLE rebuild_status ADD PRIMARY KEY (dispatch_uuid);

-- name: statuses_rebuilt_differently
-- The next `limit` workflows after `after` whose decided status the rebuild changed (a workflow new to the state was pending).
SELECT d.dispatch_uuid, coalesce(k.status, 'pending') AS previous_status
  FROM dispatch d
  LEFT JOIN rebuild_status k USING (dispatch_uuid)
 WHERE d.dispatch_uuid > %(after)s
   AND d.status IS DISTINCT FROM coalesce(k.status, 'pending')
 ORDER BY d.dispatch_uuid
 LIMIT %(limit)s;
