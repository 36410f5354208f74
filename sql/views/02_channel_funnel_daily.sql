-- analytics.channel_funnel_daily: per day (UTC, by first event) and channel, how messages fared.
CREATE VIEW analytics.channel_funnel_daily AS
WITH messages AS (
    SELECT m.channel,
           (least(m.submitted_at, m.delivered_at, m.read_at, m.rejected_at, m.undeliverable_at)
                AT TIME ZONE 'UTC')::date AS day,
           least(m.delivered_at, m.read_at) AS delivered_at,
           m.read_at,
           m.submitted_at,
           (m.rejected_at IS NOT NULL OR m.undeliverable_at IS NOT NULL)
               AND m.delivered_at IS NULL AND m.read_at IS NULL AS failed
      FROM message m
     WHERE m.channel IS NOT NULL
)
SELECT day,
       channel,
       count(*) AS sent,
       count(delivered_at) AS delivered,
       count(read_at) AS read,
       count(*) FILTER (WHERE failed) AS failed,
       round(count(delivered_at)::numeric / count(*), 4) AS delivery_rate,
       round(count(read_at)::numeric / count(*), 4) AS read_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - submitted_at))
           AS median_seconds_to_delivered,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - submitted_at))
           AS p95_seconds_to_delivered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM read_at - submitted_at))
           AS median_seconds_to_read,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM read_at - submitted_at))
           AS p95_seconds_to_read
  FROM messages
 WHERE day IS NOT NULL
 GROUP BY day, channel;

COMMENT ON VIEW analytics.channel_funnel_daily IS 'Per UTC day (of each message''s first event) and channel: sent, delivered, read, failed, rates and latency percentiles.';
COMMENT ON COLUMN analytics.channel_funnel_daily.day IS 'UTC date of the message''s first event.';
COMMENT ON COLUMN analytics.channel_funnel_daily.channel IS 'sms, mms, messenger, viber_service_msg or whatsapp.';
COMMENT ON COLUMN analytics.channel_funnel_daily.sent IS 'Messages seen (any status).';
COMMENT ON COLUMN analytics.channel_funnel_daily.delivered IS 'Messages delivered (read counts as delivered).';
COMMENT ON COLUMN analytics.channel_funnel_daily.read IS 'Messages read.';
COMMENT ON COLUMN analytics.channel_funnel_daily.failed IS 'Messages rejected or undeliverable and never delivered.';
COMMENT ON COLUMN analytics.channel_funnel_daily.delivery_rate IS 'delivered / sent.';
COMMENT ON COLUMN analytics.channel_funnel_daily.read_rate IS 'read / sent.';
COMMENT ON COLUMN analytics.channel_funnel_daily.median_seconds_to_delivered IS 'Median seconds from submitted to delivered (messages with both times).';
COMMENT ON COLUMN analytics.channel_funnel_daily.p95_seconds_to_delivered IS '95th percentile of seconds from submitted to delivered.';
COMMENT ON COLUMN analytics.channel_funnel_daily.median_seconds_to_read IS 'Median seconds from submitted to read.';
COMMENT ON COLUMN analytics.channel_funnel_daily.p95_seconds_to_read IS '95th percentile of seconds from submitted to read.';
