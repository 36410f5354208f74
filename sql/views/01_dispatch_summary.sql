-- analytics.dispatch_summary: one row per workflow, with its outcome, cost and timing.
CREATE VIEW analytics.dispatch_summary AS
-- Per-workflow message figures are rollups kept on the workflow's row by the
-- service (migration 0004), so that this view reads one table.
SELECT d.dispatch_uuid,
       d.api,
       d.template,
       d.status,
       d.decided_by,
       d.reported_status,
       d.steps_tried::bigint AS steps_tried,
       d.winning_step,
       analytics.channel_name(d.winning_channel) AS winning_channel,
       d.computed_cost,
       d.cost_currency,
       d.reported_price AS reported_cost,
       d.reported_currency,
       d.first_event_at,
       d.decided_at,
       CASE WHEN d.status = 'completed' AND d.decided_by = 'definition'
            THEN extract(epoch FROM d.decided_at - d.first_event_at) END AS seconds_to_success,
       d.first_received_at,
       d.updated_at
  FROM dispatch d;

COMMENT ON VIEW analytics.dispatch_summary IS 'One row per workflow (dispatch_uuid), of either API: outcome, steps tried, winning channel, cost computed and reported, time to success.';
COMMENT ON COLUMN analytics.dispatch_summary.dispatch_uuid IS 'The workflow''s id, as Vonage gave it: Dispatch''s dispatch_uuid, or the Messages API''s workflow_id.';
COMMENT ON COLUMN analytics.dispatch_summary.api IS 'dispatch (Dispatch API) or messages (Messages API failover).';
COMMENT ON COLUMN analytics.dispatch_summary.template IS 'Dispatch template (failover), from the final report; null before it.';
COMMENT ON COLUMN analytics.dispatch_summary.status IS 'Status decided by this service: pending, completed or error.';
COMMENT ON COLUMN analytics.dispatch_summary.decided_by IS 'What decided the status: definition, final_report, callbacks (a Messages API workflow by its items), or null (not decided yet).';
COMMENT ON COLUMN analytics.dispatch_summary.reported_status IS 'Status in Dispatch''s final report (completed or error); null until it arrives, and always for the Messages API, which sends none.';
COMMENT ON COLUMN analytics.dispatch_summary.steps_tried IS 'Number of messages seen for the workflow (one per step tried).';
COMMENT ON COLUMN analytics.dispatch_summary.winning_step IS 'Step (1-based) whose message met its condition in time; null if none or no definition.';
COMMENT ON COLUMN analytics.dispatch_summary.winning_channel IS 'Channel of the winning step, from the workflow definition.';
COMMENT ON COLUMN analytics.dispatch_summary.computed_cost IS 'Sum of the workflow''s message prices (one price per message), exact.';
COMMENT ON COLUMN analytics.dispatch_summary.cost_currency IS 'Currency of computed_cost; MIXED if the messages were priced in several.';
COMMENT ON COLUMN analytics.dispatch_summary.reported_cost IS 'Total in Dispatch''s final report (may miss late deliveries).';
COMMENT ON COLUMN analytics.dispatch_summary.reported_currency IS 'Currency of reported_cost.';
COMMENT ON COLUMN analytics.dispatch_summary.first_event_at IS 'Event time of the workflow''s first message event (normally step 1 submitted).';
COMMENT ON COLUMN analytics.dispatch_summary.decided_at IS 'Event time of the outcome (the winning condition, the last failure, or the final report).';
COMMENT ON COLUMN analytics.dispatch_summary.seconds_to_success IS 'Seconds from the first event to success, for workflows completed by their definition.';
COMMENT ON COLUMN analytics.dispatch_summary.first_received_at IS 'When this service first received a callback naming the workflow.';
COMMENT ON COLUMN analytics.dispatch_summary.updated_at IS 'When this service last changed the workflow.';
