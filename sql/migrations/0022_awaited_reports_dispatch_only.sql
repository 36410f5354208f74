-- 0022: the index of workflows awaiting Dispatch's final report holds Dispatch's workflows only.
-- migrate: one statement at a time, outside a transaction
--
-- The Messages API sends no final report, so overdue_workflows (0012) leaves
-- its workflows out of 'final_report_overdue'; but dispatch_awaiting_report_idx
-- (0002) held every decided Messages API workflow, whose reported_status stays
-- null. At the growth benchmark's size (5 million workflows, 30% on the
-- Messages API) the index held 1.4 million rows that every overdue listing and
-- sweep read and threw away (1.1 s for the dashboard's list of 20), and it
-- grows with each such workflow. Built without holding the applier; a failed
-- build leaves an invalid index, dropped before building again.

DROP INDEX CONCURRENTLY IF EXISTS dispatch_awaiting_dispatch_report_idx;
CREATE INDEX CONCURRENTLY dispatch_awaiting_dispatch_report_idx ON dispatch (decided_at)
    WHERE decided_by = 'definition' AND status <> 'pending' AND reported_status IS NULL
      AND api IS DISTINCT FROM 'messages';
DROP INDEX CONCURRENTLY IF EXISTS dispatch_awaiting_report_idx;
