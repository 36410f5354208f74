-- analytics.failover_rate: per step (order of appearance in its workflow) and channel, how often the next step followed.
CREATE VIEW analytics.failover_rate AS
-- analytics.failover_rate_daily added up over the days (its kept days make this cheap).
SELECT api,
       step,
       channel,
       sum(messages)::bigint AS messages,
       sum(failed_over)::bigint AS failed_over,
       round(sum(failed_over) / sum(messages), 4) AS failover_rate
  FROM analytics.failover_rate_daily
 GROUP BY api, step, channel;

COMMENT ON VIEW analytics.failover_rate IS 'Per step (1-based, by order of appearance in the workflow) and channel: how many messages were followed by a next step. Messages at their workflow''s last step (by its definition, or a Messages API workflow''s items) are left out: they cannot fail over.';
COMMENT ON COLUMN analytics.failover_rate.api IS 'The API that ran the workflows: dispatch or messages.';
COMMENT ON COLUMN analytics.failover_rate.step IS 'Position of the message in its workflow (1 = first sent).';
COMMENT ON COLUMN analytics.failover_rate.channel IS 'Channel of the message at that step.';
COMMENT ON COLUMN analytics.failover_rate.messages IS 'Messages seen at that step and channel.';
COMMENT ON COLUMN analytics.failover_rate.failed_over IS 'Of those, how many were followed by a message of a next step.';
COMMENT ON COLUMN analytics.failover_rate.failover_rate IS 'failed_over / messages.';
