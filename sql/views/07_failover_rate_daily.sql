-- analytics.failover_rate_daily: per day the workflow began, step and channel, how often the next step followed.
--
-- As channel_funnel_daily: daily.failover_rate_now computes the stale
-- days (and workflows without an event time, whose day is null: never kept),
-- a keep stores the dated ones, the view gives both.
CREATE VIEW daily.failover_rate_now AS
-- analytics.failover_steps, added up per day, step and channel.
SELECT day,
       api,
       step,
       channel,
       count(*) AS messages,
       count(*) FILTER (WHERE failed_over) AS failed_over,
       round(count(*) FILTER (WHERE failed_over)::numeric / count(*), 4) AS failover_rate
  -- Each stale day's workflows, then those without a day, each read through
  -- dispatch_first_event_day_idx (as channel_funnel_now).
  FROM (SELECT f.*
          FROM daily.days_computed AS stale
         CROSS JOIN LATERAL (SELECT * FROM analytics.failover_steps
                              WHERE day = stale.day OFFSET 0) AS f
        UNION ALL
        SELECT * FROM analytics.failover_steps WHERE day IS NULL) AS s
 GROUP BY day, api, step, channel;

CREATE VIEW analytics.failover_rate_daily AS
SELECT r.*
  FROM daily.failover_rate r
 WHERE NOT EXISTS (SELECT FROM daily.stale_day s WHERE s.day = r.day)
UNION ALL
SELECT * FROM daily.failover_rate_now;

COMMENT ON VIEW analytics.failover_rate_daily IS 'Per UTC day a workflow began, step and channel: how many messages were followed by a next step (sum messages and failed_over over days for a period). Messages at their workflow''s last step (by its definition, or a Messages API workflow''s items) are left out: they cannot fail over.';
COMMENT ON COLUMN analytics.failover_rate_daily.day IS 'UTC date of the first event of the workflow the message belongs to.';
COMMENT ON COLUMN analytics.failover_rate_daily.api IS 'The API that ran the workflows: dispatch or messages.';
COMMENT ON COLUMN analytics.failover_rate_daily.step IS 'Position of the message in its workflow (1 = first sent).';
COMMENT ON COLUMN analytics.failover_rate_daily.channel IS 'Channel of the message at that step.';
COMMENT ON COLUMN analytics.failover_rate_daily.messages IS 'Messages seen at that step and channel, in workflows begun that day.';
COMMENT ON COLUMN analytics.failover_rate_daily.failed_over IS 'Of those, how many were followed by a message of a next step.';
COMMENT ON COLUMN analytics.failover_rate_daily.failover_rate IS 'failed_over / messages, for that day alone.';
