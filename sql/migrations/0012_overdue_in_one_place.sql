-- 0012: what "overdue" means, in one place.
--
-- `dispatch-ledger overdue`, GET /workflows?overdue=true and the dashboard
-- list overdue workflows; /metrics counts them at every scrape. Both read this
-- function, so the rules cannot drift apart, and a scrape counts in SQL
-- instead of fetching every overdue row.
--
-- A failover is overdue once it was due (a step's deadline, or a failure
-- reported with no next message) before `cutoff` (now - OVERDUE_GRACE_SECONDS);
-- a step without a deadline once it was submitted before `awaiting_cutoff`
-- (now - LAST_STEP_TIMEOUT_SECONDS); a Dispatch final report once the workflow
-- was decided by its definition before `cutoff` (the Messages API sends none).
CREATE FUNCTION overdue_workflows(cutoff timestamptz, awaiting_cutoff timestamptz)
    RETURNS TABLE (dispatch_uuid text, api text, status text, current_step integer,
                   kind text, since timestamptz)
    LANGUAGE sql STABLE
AS $$
    SELECT d.dispatch_uuid, d.api, d.status, d.current_step, 'failover_overdue', d.due_at
      FROM dispatch d
     WHERE d.status = 'pending' AND d.due_at IS NOT NULL AND d.due_at < cutoff
    UNION ALL
    SELECT d.dispatch_uuid, d.api, d.status, d.current_step, 'outcome_overdue', d.awaiting_since
      FROM dispatch d
     WHERE d.status = 'pending' AND d.awaiting_since IS NOT NULL
       AND d.awaiting_since < awaiting_cutoff
    UNION ALL
    SELECT d.dispatch_uuid, d.api, d.status, d.current_step, 'final_report_overdue', d.decided_at
      FROM dispatch d
     WHERE d.decided_by = 'definition' AND d.status <> 'pending' AND d.reported_status IS NULL
       AND d.decided_at < cutoff AND d.api IS DISTINCT FROM 'messages'
$$;
