-- 0011: each workflow's latest event time, for "recent workflows" by what last happened,
-- and a Messages API workflow's number of items.
--
-- updated_at moves only when a workflow is created or its final report
-- arrives, so listing by it showed workflows in the order they began. The
-- service keeps last_event_at with the other rollups (0004), in the
-- transaction that changes the workflow's messages.
ALTER TABLE dispatch
    ADD COLUMN last_event_at timestamptz,
    -- A Messages API workflow's size as its items say (the views leave its
    -- last step out of failover rates, as a definition's last step).
    ADD COLUMN items_total   integer;
COMMENT ON COLUMN dispatch.last_event_at IS 'Latest event time among its messages'' statuses.';
COMMENT ON COLUMN dispatch.items_total IS 'Messages API failover: how many items its messages say it has (the largest).';

-- Existing workflows get theirs once, here.
UPDATE dispatch d
   SET last_event_at = r.last_event_at, items_total = r.items_total
  FROM (SELECT dispatch_uuid,
               max(greatest(submitted_at, delivered_at, read_at, rejected_at, undeliverable_at))
                   AS last_event_at,
               max(items_total) AS items_total
          FROM message
         WHERE dispatch_uuid IS NOT NULL
         GROUP BY dispatch_uuid) r
 WHERE d.dispatch_uuid = r.dispatch_uuid;

CREATE INDEX dispatch_last_event_at_idx ON dispatch (last_event_at DESC NULLS LAST, dispatch_uuid);
