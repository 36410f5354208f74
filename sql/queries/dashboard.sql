-- name: dashboard_funnel
-- Per channel over the period (of one API, or both): sent, delivered, read, failed.
SELECT channel, sum(sent)::int AS sent, sum(delivered)::int AS delivered,
       sum(read)::int AS read, sum(failed)::int AS failed
  FROM analytics.channel_funnel_daily
 WHERE day >= %(since)s AND (%(api)s::text IS NULL OR api = %(api)s::text)
 GROUP BY channel
 ORDER BY channel;

-- name: dashboard_failover
-- Failover rate by step and channel, over the workflows begun in the period (of one API, or both).
SELECT step, channel, sum(messages)::int AS messages, sum(failed_over)::int AS failed_over,
       round(sum(failed_over) / sum(messages), 4) AS failover_rate
  FROM analytics.failover_rate_daily
 WHERE day >= %(since)s AND (%(api)s::text IS NULL OR api = %(api)s::text)
 GROUP BY step, channel
 ORDER BY step, channel;
