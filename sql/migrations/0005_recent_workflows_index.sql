-- 0005: the dashboard's list of recent workflows, by index.
--
-- At 1 million workflows, `list_recent` scanned and sorted the whole table
-- (0.3 s of every dashboard view). updated_at moves only when a workflow is
-- created or its final report arrives, so the index costs ingest little.
CREATE INDEX dispatch_updated_at_idx ON dispatch (updated_at DESC, dispatch_uuid);
