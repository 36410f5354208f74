-- analytics.failover_steps: each message at a step that could fail over, and whether it did.
CREATE VIEW analytics.failover_steps AS
-- Each workflow's row lists its messages' channels in order of appearance
-- (kept by the service, migration 0004): a message at step n was followed by a
-- next step when the workflow has more than n. The failover views add these
-- rows up; columns a query does not use are not computed (the view is
-- flattened into it), so failover_rate pays nothing for `day`.
SELECT d.dispatch_uuid,
       d.api,
       (d.first_event_at AT TIME ZONE 'UTC')::date AS day,
       s.step,
       analytics.channel_name(s.channel) AS channel,
       s.step < cardinality(d.message_channels) AS failed_over
  FROM dispatch d
  LEFT JOIN workflow_definition w USING (dispatch_uuid)
 CROSS JOIN LATERAL unnest(d.message_channels) WITH ORDINALITY AS s (channel, step)
 -- A workflow's last step (by its definition, or a Messages API workflow's
 -- items) cannot fail over: left out, so that it does not show as a 0% rate.
 WHERE s.step < coalesce(w.step_count, d.items_total, s.step + 1);

COMMENT ON VIEW analytics.failover_steps IS 'One row per message at a step that could fail over: its workflow, the step (1-based, by order of appearance) and channel, and whether a next step followed. Messages at their workflow''s last step (by its definition, or a Messages API workflow''s items) are left out: they cannot fail over.';
COMMENT ON COLUMN analytics.failover_steps.dispatch_uuid IS 'The workflow (a Messages API workflow''s workflow_id).';
COMMENT ON COLUMN analytics.failover_steps.api IS 'The API that ran the workflow: dispatch or messages.';
COMMENT ON COLUMN analytics.failover_steps.day IS 'UTC date of the first event of the workflow.';
COMMENT ON COLUMN analytics.failover_steps.step IS 'Position of the message in its workflow (1 = first sent).';
COMMENT ON COLUMN analytics.failover_steps.channel IS 'Channel of the message at that step (analytics.channel_name: one name across both APIs).';
COMMENT ON COLUMN analytics.failover_steps.failed_over IS 'Whether a message of a next step followed.';
