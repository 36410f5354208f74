-- analytics.failover_rate_daily: per day the workflow began, step and channel, how often the next step followed.
CREATE VIEW analytics.failover_rate_daily AS
-- Each workflow's row lists its messages' channels in order of appearance
-- (kept by the service, migration 0004): a message at step n was followed by a
-- next step when the workflow has more than n. Grouped by the UTC day of the
-- workflow's first event; analytics.failover_rate adds the days up.
SELECT (d.first_event_at AT TIME ZONE 'UTC')::date AS day,
       d.api,
       s.step,
       analytics.channel_name(s.channel) AS channel,
       count(*) AS messages,
       count(*) FILTER (WHERE s.step < cardinality(d.message_channels)) AS failed_over,
       round(count(*) FILTER (WHERE s.step < cardinality(d.message_channels))::numeric / count(*),
             4) AS failover_rate
  FROM dispatch d
  LEFT JOIN workflow_definition w USING (dispatch_uuid)
 CROSS JOIN LATERAL unnest(d.message_channels) WITH ORDINALITY AS s (channel, step)
 -- A workflow's last step (by its definition, or a Messages API workflow's
 -- items) cannot fail over: left out, so that it does not show as a 0% rate.
 WHERE s.step < coalesce(jsonb_array_length(w.steps), d.items_total, s.step + 1)
 GROUP BY 1, d.api, s.step, 4;

COMMENT ON VIEW analytics.failover_rate_daily IS 'Per UTC day a workflow began, step and channel: how many messages were followed by a next step (sum messages and failed_over over days for a period). Messages at their workflow''s last step (by its definition, or a Messages API workflow''s items) are left out: they cannot fail over.';
COMMENT ON COLUMN analytics.failover_rate_daily.day IS 'UTC date of the first event of the workflow the message belongs to.';
COMMENT ON COLUMN analytics.failover_rate_daily.api IS 'The API that ran the workflows: dispatch or messages.';
COMMENT ON COLUMN analytics.failover_rate_daily.step IS 'Position of the message in its workflow (1 = first sent).';
COMMENT ON COLUMN analytics.failover_rate_daily.channel IS 'Channel of the message at that step.';
COMMENT ON COLUMN analytics.failover_rate_daily.messages IS 'Messages seen at that step and channel, in workflows begun that day.';
COMMENT ON COLUMN analytics.failover_rate_daily.failed_over IS 'Of those, how many were followed by a message of a next step.';
COMMENT ON COLUMN analytics.failover_rate_daily.failover_rate IS 'failed_over / messages, for that day alone.';
