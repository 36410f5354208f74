-- name: dashboard_funnel
-- Per channel over the period: sent, delivered, read, failed.
SELECT channel, sum(sent)::int AS sent, sum(delivered)::int AS delivered,
       sum(read)::int AS read, sum(failed)::int AS failed
  FROM analytics.channel_funnel_daily
 WHERE day >= %(since)s
 GROUP BY channel
 ORDER BY channel;

-- name: dashboard_failover
-- Failover rate by step and channel, over the workflows of the period.
SELECT step, channel, messages, failed_over, failover_rate
  FROM analytics.failover_rate
 ORDER BY step, channel;
