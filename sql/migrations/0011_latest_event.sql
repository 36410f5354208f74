-- 0011: each workflow's latest event time, for "recent workflows" by what last happened.
--
-- updated_at moves only when a workflow is created or its final report
-- arrives, so listing by it showed workflows in the order they began. The
-- service keeps last_event_at with the other rollups (0004), in the
-- transaction that changes the workflow's messages.
ALTER TABLE dispatch ADD COLUMN last_event_at timestamptz;
COMMENT ON COLUMN dispatch.last_event_at IS 'Latest event time among its messages'' statuses.';

-- Existing workflows get theirs once, here.
UPDATE dispatch d
   SET last_event_at = r.last_event_at
  FROM (SELECT dispatch_uuid,
               max(greatest(submitted_at, delivered_at, read_at, rejected_at, undeliverable_at))
                   AS last_event_at
          FROM message
         WHERE dispatch_uuid IS NOT NULL
         GROUP BY dispatch_uuid) r
 WHERE d.dispatch_uuid = r.dispatch_uuid;

CREATE INDEX dispatch_last_event_at_idx ON dispatch (last_event_at DESC NULLS LAST, dispatch_uuid);
