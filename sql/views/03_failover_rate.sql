-- analytics.failover_rate: per step (order of appearance in its workflow) and channel, how often the next step followed.
CREATE VIEW analytics.failover_rate AS
WITH ordered AS (
    SELECT m.dispatch_uuid,
           m.channel,
           row_number() OVER w AS step,
           lead(m.message_uuid) OVER w IS NOT NULL AS failed_over
      FROM message m
     WHERE m.dispatch_uuid IS NOT NULL AND m.channel IS NOT NULL
    WINDOW w AS (PARTITION BY m.dispatch_uuid
                 ORDER BY least(m.submitted_at, m.delivered_at, m.read_at, m.rejected_at,
                                m.undeliverable_at) NULLS LAST, m.message_uuid)
)
SELECT step,
       channel,
       count(*) AS messages,
       count(*) FILTER (WHERE failed_over) AS failed_over,
       round(count(*) FILTER (WHERE failed_over)::numeric / count(*), 4) AS failover_rate
  FROM ordered
 GROUP BY step, channel;

COMMENT ON VIEW analytics.failover_rate IS 'Per step (1-based, by order of appearance in the workflow) and channel: how many messages were followed by a next step.';
COMMENT ON COLUMN analytics.failover_rate.step IS 'Position of the message in its workflow (1 = first sent).';
COMMENT ON COLUMN analytics.failover_rate.channel IS 'Channel of the message at that step.';
COMMENT ON COLUMN analytics.failover_rate.messages IS 'Messages seen at that step and channel.';
COMMENT ON COLUMN analytics.failover_rate.failed_over IS 'Of those, how many were followed by a message of a next step.';
COMMENT ON COLUMN analytics.failover_rate.failover_rate IS 'failed_over / messages.';
