-- Events out: the outbox every decision writes to, the feed read from it in
-- commit order, the overdue sweeper, and the endpoints events are sent to.
-- app/store/events.py and app/store/endpoints.py run these.

-- name: take_feed_lock
-- Become the one transaction drawing feed positions until this one commits (taken last, just before COMMIT).
SELECT pg_advisory_xact_lock(%(key)s);

-- name: emit_events
-- Record events for locked workflows (one array per column), each with the workflow's summary as it now stands and its next sequence number.
WITH e AS (
    SELECT e.dispatch_uuid, e.type, e.detail::jsonb AS detail, e.n,
           row_number() OVER (PARTITION BY e.dispatch_uuid ORDER BY e.n) AS k
      FROM unnest(%(dispatch_uuid)b::text[], %(type)b::text[], %(detail)b::text[])
           WITH ORDINALITY AS e(dispatch_uuid, type, detail, n)
), made AS (
    SELECT e.n, e.type, e.detail, d.*,
           coalesce((SELECT max(w.sequence) FROM workflow_event w
                      WHERE w.dispatch_uuid = d.dispatch_uuid), 0) + e.k AS sequence,
           (SELECT jsonb_object_agg(p.currency, p.total::text ORDER BY p.currency)
              FROM (SELECT m.currency, sum(m.price) AS total
                      FROM message m
                     WHERE m.dispatch_uuid = d.dispatch_uuid AND m.price IS NOT NULL
                     GROUP BY m.currency) p) AS usage
      FROM e
      JOIN dispatch d ON d.dispatch_uuid = e.dispatch_uuid
)
INSERT INTO workflow_event (position, event_id, type, dispatch_uuid, sequence, created_at, data)
SELECT nextval('workflow_event_position'),
       'evt_' || replace(gen_random_uuid()::text, '-', ''),
       type, dispatch_uuid, sequence, %(now)s,
       jsonb_build_object(
           'dispatch_uuid', dispatch_uuid,
           'api', coalesce(api, 'dispatch'),
           'sequence', sequence,
           'status', status,
           'decided_by', decided_by,
           'decided_at', (to_jsonb(decided_at AT TIME ZONE 'UTC') #>> '{}') || 'Z',
           'winning_step', winning_step,
           'winning_channel', winning_channel,
           'current_step', CASE WHEN status = 'pending' THEN current_step END,
           'messages', steps_tried,
           'usage', coalesce(usage, '{}'::jsonb),
           'reported_status', reported_status,
           'reported_usage', CASE WHEN reported_price IS NOT NULL
                                  THEN jsonb_build_object(reported_currency, reported_price::text)
                             END
       ) || detail
  FROM made
 ORDER BY n
RETURNING position;

-- name: feed_page
-- Events after a feed position, in commit order.
SELECT position, event_id, type, created_at, data
  FROM workflow_event
 WHERE position > %(after)s
 ORDER BY position
 LIMIT %(limit)s;

-- name: workflow_events
-- A workflow's events, in its own order.
SELECT position, event_id, type, created_at, data
  FROM workflow_event
 WHERE dispatch_uuid = %(dispatch_uuid)s
 ORDER BY sequence;

-- name: feed_head
-- The last feed position handed out so far (0: none yet).
SELECT coalesce(max(position), 0) AS head FROM workflow_event;

-- name: recorded_findings
-- Locked workflows' current disagreements with their final reports (to tell the new ones).
SELECT dispatch_uuid, kind, detail FROM reconciliation WHERE dispatch_uuid = ANY(%(ids)b);

-- name: keep_statuses_for_rebuild
-- Keep each workflow's decided status aside, so that a rebuild tells only the outcomes it changes.
CREATE TEMP TABLE rebuild_status ON COMMIT DROP AS SELECT dispatch_uuid, status FROM dispatch;

-- name: statuses_rebuilt_differently
-- Workflows whose decided status the rebuild changed (a workflow new to the state was pending).
SELECT d.dispatch_uuid, coalesce(k.status, 'pending') AS previous_status
  FROM dispatch d
  LEFT JOIN rebuild_status k USING (dispatch_uuid)
 WHERE d.status IS DISTINCT FROM coalesce(k.status, 'pending')
 ORDER BY d.dispatch_uuid;

-- name: overdue_not_noticed
-- Workflows overdue in a way no event has told yet (app/pipeline/overdue_events.py).
SELECT DISTINCT o.dispatch_uuid
  FROM overdue_workflows(%(cutoff)s, %(awaiting_cutoff)s) o
 WHERE NOT EXISTS (SELECT 1 FROM overdue_notice n
                    WHERE n.dispatch_uuid = o.dispatch_uuid AND n.kind = o.kind)
 ORDER BY o.dispatch_uuid
 LIMIT %(limit)s;

-- name: lock_for_notice
-- Lock workflows to tell them overdue, in id order; those an applier holds are left for the next sweep.
SELECT dispatch_uuid
  FROM dispatch
 WHERE dispatch_uuid = ANY(%(ids)b)
 ORDER BY dispatch_uuid COLLATE "C"
   FOR NO KEY UPDATE SKIP LOCKED;

-- name: notice_overdue
-- Of locked workflows, note each kind of overdue they are now in and were not told of; returns the new ones.
INSERT INTO overdue_notice (dispatch_uuid, kind, since, noticed_at)
SELECT o.dispatch_uuid, o.kind, o.since, %(now)s
  FROM overdue_workflows(%(cutoff)s, %(awaiting_cutoff)s) o
 WHERE o.dispatch_uuid = ANY(%(ids)b)
 ORDER BY o.dispatch_uuid, o.kind
ON CONFLICT ON CONSTRAINT overdue_notice_pkey DO NOTHING
RETURNING dispatch_uuid, kind, since,
          (SELECT d.api FROM dispatch d WHERE d.dispatch_uuid = overdue_notice.dispatch_uuid) AS api,
          (SELECT d.current_step FROM dispatch d
            WHERE d.dispatch_uuid = overdue_notice.dispatch_uuid) AS current_step;
