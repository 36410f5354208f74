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

-- name: overdue_not_noticed
-- Workflows overdue in a way no event has told yet (app/pipeline/overdue_events.py), of those whose deadline is not before `from` (`awaiting_from` for the outcome): each kind's condition then reads a range of its index, not every workflow ever overdue.
SELECT DISTINCT o.dispatch_uuid
  FROM overdue_workflows(%(cutoff)s, %(awaiting_cutoff)s) o
 WHERE o.since >= CASE o.kind WHEN 'outcome_overdue' THEN %(awaiting_from)s::timestamptz
                              ELSE %(from)s::timestamptz END
   AND NOT EXISTS (SELECT 1 FROM overdue_notice n
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

-- name: insert_endpoint
-- Register an endpoint; it receives the events made from now on (after the feed's head).
INSERT INTO endpoint (endpoint_id, url, event_types, description, secret, created_at, queued_up_to)
VALUES (%(endpoint_id)s, %(url)s, %(event_types)s, %(description)s, %(secret)s, %(now)s,
        (SELECT coalesce(max(position), 0) FROM workflow_event))
RETURNING endpoint_id, url, event_types, description, secret, created_at;

-- name: list_endpoints
-- Every endpoint with its health: what waits to be sent to it, the oldest of that, its last outcome.
SELECT n.endpoint_id, n.url, n.event_types, n.description, n.created_at, n.disabled_at,
       n.disabled_reason, n.last_delivered_at, n.queued_up_to,
       coalesce(p.pending, 0) AS pending, p.oldest_pending_at,
       l.last_attempt_at, l.last_outcome
  FROM endpoint n
  LEFT JOIN LATERAL (
       SELECT count(*) AS pending, min(w.created_at) AS oldest_pending_at
         FROM endpoint_delivery d
         JOIN workflow_event w USING (position)
        WHERE d.endpoint_id = n.endpoint_id AND d.due_at IS NOT NULL) p ON true
  LEFT JOIN LATERAL (
       SELECT d.last_attempt_at, d.last_outcome
         FROM endpoint_delivery d
        WHERE d.endpoint_id = n.endpoint_id AND d.last_attempt_at IS NOT NULL
        ORDER BY d.last_attempt_at DESC
        LIMIT 1) l ON true
 ORDER BY n.created_at, n.endpoint_id;

-- name: delete_endpoint
-- Remove an endpoint and what waits to be sent to it.
DELETE FROM endpoint WHERE endpoint_id = %(endpoint_id)s RETURNING endpoint_id;

-- name: rotate_secret
-- Give an endpoint a new secret; the old one signs too until `until` (receivers switch meanwhile).
UPDATE endpoint
   SET previous_secret = secret, previous_secret_until = %(until)s, secret = %(secret)s
 WHERE endpoint_id = %(endpoint_id)s
RETURNING endpoint_id, secret;

-- name: enable_endpoint
-- Turn a disabled endpoint back on: it receives events from now on, and what waits to be sent is due again.
WITH turned AS (
    UPDATE endpoint
       SET disabled_at = NULL, disabled_reason = NULL,
           queued_up_to = CASE WHEN disabled_at IS NULL THEN queued_up_to
                               ELSE (SELECT coalesce(max(position), 0) FROM workflow_event) END
     WHERE endpoint_id = %(endpoint_id)s
    RETURNING endpoint_id)
UPDATE endpoint_delivery d
   SET due_at = %(now)s, leased_until = NULL
  FROM turned
 WHERE d.endpoint_id = turned.endpoint_id AND d.due_at IS NOT NULL;

-- name: endpoint_exists
-- Whether an endpoint is registered.
SELECT endpoint_id FROM endpoint WHERE endpoint_id = %(endpoint_id)s;

-- name: replay_endpoint
-- Send again every event made since a time, of the endpoint's types, that it has not received (attempts start over).
INSERT INTO endpoint_delivery (endpoint_id, position, due_at)
SELECT n.endpoint_id, w.position, %(now)s
  FROM endpoint n
  JOIN workflow_event w ON w.created_at >= %(since)s
                       AND (n.event_types IS NULL OR w.type = ANY(n.event_types))
 WHERE n.endpoint_id = %(endpoint_id)s
ON CONFLICT ON CONSTRAINT endpoint_delivery_pkey DO UPDATE
   SET due_at = excluded.due_at, attempts = 0, leased_until = NULL, given_up_at = NULL
 WHERE endpoint_delivery.delivered_at IS NULL
RETURNING position;

-- name: queue_deliveries
-- For each enabled endpoint no other deliverer holds, queue the next events of its types after its position.
WITH n AS (
    SELECT endpoint_id, event_types, queued_up_to
      FROM endpoint
     WHERE disabled_at IS NULL
       AND queued_up_to < (SELECT coalesce(max(position), 0) FROM workflow_event)
     ORDER BY endpoint_id
       FOR NO KEY UPDATE SKIP LOCKED
), picked AS (
    SELECT n.endpoint_id, n.event_types, w.position, w.type
      FROM n
     CROSS JOIN LATERAL (SELECT position, type FROM workflow_event
                          WHERE position > n.queued_up_to
                          ORDER BY position
                          LIMIT %(limit)s) w
), queued AS (
    INSERT INTO endpoint_delivery (endpoint_id, position, due_at)
    SELECT endpoint_id, position, %(now)s FROM picked
     WHERE event_types IS NULL OR type = ANY(event_types)
    ON CONFLICT ON CONSTRAINT endpoint_delivery_pkey DO NOTHING
    RETURNING endpoint_id
), moved AS (
    UPDATE endpoint e
       SET queued_up_to = m.up_to
      FROM (SELECT endpoint_id, max(position) AS up_to FROM picked GROUP BY endpoint_id) m
     WHERE e.endpoint_id = m.endpoint_id
    RETURNING e.endpoint_id
)
SELECT (SELECT count(*) FROM queued) AS queued, (SELECT count(*) FROM moved) AS endpoints;

-- name: claim_deliveries
-- Take up to `per_endpoint` due deliveries of each enabled endpoint not in `busy` (held until `until`), with their events and the endpoints' secrets.
WITH due AS (
    SELECT d.endpoint_id, d.position
      FROM endpoint n
     CROSS JOIN LATERAL (
           SELECT d.endpoint_id, d.position
             FROM endpoint_delivery d
            WHERE d.endpoint_id = n.endpoint_id
              AND d.due_at <= %(now)s
              AND (d.leased_until IS NULL OR d.leased_until <= %(now)s)
            ORDER BY d.due_at, d.position
            LIMIT %(per_endpoint)s
              FOR UPDATE SKIP LOCKED) d
     WHERE n.disabled_at IS NULL AND NOT n.endpoint_id = ANY(%(busy)s::text[])
)
UPDATE endpoint_delivery d
   SET leased_until = %(until)s
  FROM due, endpoint n, workflow_event w
 WHERE d.endpoint_id = due.endpoint_id AND d.position = due.position
   AND n.endpoint_id = d.endpoint_id AND w.position = d.position
RETURNING d.endpoint_id, d.position, d.attempts, n.url, n.secret,
          CASE WHEN n.previous_secret_until > %(now)s THEN n.previous_secret END AS previous_secret,
          w.event_id, w.type, w.created_at, w.data;

-- name: delivered
-- A delivery succeeded: done, and the endpoint is known to be alive.
WITH done AS (
    UPDATE endpoint_delivery
       SET due_at = NULL, leased_until = NULL, attempts = attempts + 1,
           last_attempt_at = %(now)s, last_outcome = %(outcome)s, delivered_at = %(now)s
     WHERE endpoint_id = %(endpoint_id)s AND position = %(position)s
    RETURNING endpoint_id)
UPDATE endpoint n SET last_delivered_at = %(now)s
  FROM done WHERE n.endpoint_id = done.endpoint_id;

-- name: failed_attempt
-- A delivery failed: try again at `retry_at`, or (NULL) give up on it.
UPDATE endpoint_delivery
   SET due_at = %(retry_at)s, leased_until = NULL, attempts = attempts + 1,
       last_attempt_at = %(now)s, last_outcome = %(outcome)s,
       given_up_at = CASE WHEN %(retry_at)s::timestamptz IS NULL THEN %(now)s END
 WHERE endpoint_id = %(endpoint_id)s AND position = %(position)s
RETURNING endpoint_id;

-- name: defer_deliveries
-- The endpoint is failing: put its other claimed deliveries off until `until`, without counting an attempt.
UPDATE endpoint_delivery
   SET due_at = %(until)s, leased_until = NULL
 WHERE endpoint_id = %(endpoint_id)s AND position = ANY(%(positions)s::bigint[])
   AND due_at IS NOT NULL;

-- name: disable_endpoint_if_dead
-- A delivery was given up on: disable its endpoint unless a delivery succeeded since that one was first due.
UPDATE endpoint n
   SET disabled_at = %(now)s, disabled_reason = %(reason)s
 WHERE n.endpoint_id = %(endpoint_id)s AND n.disabled_at IS NULL
   AND (n.last_delivered_at IS NULL OR n.last_delivered_at < %(since)s)
RETURNING endpoint_id;

-- name: delivery_health
-- For /metrics: the oldest event still to be sent to an enabled endpoint, and the disabled endpoints.
SELECT (SELECT min(w.created_at)
          FROM endpoint_delivery d
          JOIN endpoint n USING (endpoint_id)
          JOIN workflow_event w USING (position)
         WHERE d.due_at IS NOT NULL AND n.disabled_at IS NULL) AS oldest_undelivered_at,
       (SELECT min(x.created_at)
          FROM endpoint n
         CROSS JOIN LATERAL (SELECT w.created_at FROM workflow_event w
                              WHERE w.position > n.queued_up_to
                              ORDER BY w.position LIMIT 1) x
         WHERE n.disabled_at IS NULL) AS oldest_unqueued_at,
       (SELECT count(*) FROM endpoint WHERE disabled_at IS NOT NULL) AS disabled,
       (SELECT count(*) FROM endpoint) AS endpoints;

-- name: release_deliveries
-- A deliverer stopping gives back the deliveries it leased and did not record (those still under its lease), for another to send now.
UPDATE endpoint_delivery d
   SET leased_until = NULL
  FROM unnest(%(endpoint_id)b::text[], %(position)b::bigint[], %(until)b::timestamptz[])
       AS r(endpoint_id, position, until)
 WHERE d.endpoint_id = r.endpoint_id AND d.position = r.position
   AND d.leased_until = r.until AND d.due_at IS NOT NULL;
