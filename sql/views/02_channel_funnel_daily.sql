-- analytics.channel_funnel_daily: per day (UTC, by first event) and channel, how messages fared.
--
-- A message counts by its current status as the service decided it (the
-- read API's `status`: a final report can settle a message that a callback
-- did not); times come from the callbacks' event times.
--
-- The rule: daily.channel_funnel_now computes the days noted stale
-- (daily.days_computed: during a keep, only the days it keeps);
-- a keep stores its rows in daily.channel_funnel, a few days at a time
-- (migration 0021, app/store/daily_figures.py); the view gives the kept days
-- and the computed ones, from one snapshot: exact whenever read.
CREATE VIEW daily.channel_funnel_now AS
WITH messages AS (
    SELECT analytics.channel_name(m.channel) AS channel,
           m.api,
           (m.first_event_at AT TIME ZONE 'UTC')::date AS day,
           m.status IN ('delivered', 'read') AS delivered,
           m.status = 'read' AS read,
           m.status IN ('rejected', 'undeliverable') AS failed,
           m.delivery_reached_at AS delivered_at,
           m.read_at,
           m.submitted_at
      -- Each stale day's messages read through message_first_event_day_idx: the
      -- fence (OFFSET 0) makes it one index scan a day, whatever the planner
      -- guesses of how many days are stale (unfenced, it read all 12 million
      -- messages at the growth benchmark's size, for none).
      FROM daily.days_computed AS stale
     CROSS JOIN LATERAL (SELECT * FROM message
                          WHERE (first_event_at AT TIME ZONE 'UTC')::date = stale.day
                         OFFSET 0) AS m
     WHERE m.channel IS NOT NULL
)
SELECT day,
       api,
       channel,
       count(*) AS sent,
       count(*) FILTER (WHERE delivered) AS delivered,
       count(*) FILTER (WHERE read) AS read,
       count(*) FILTER (WHERE failed) AS failed,
       round(count(*) FILTER (WHERE delivered)::numeric / count(*), 4) AS delivery_rate,
       round(count(*) FILTER (WHERE read)::numeric / count(*), 4) AS read_rate,
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
 GROUP BY day, api, channel;

CREATE VIEW analytics.channel_funnel_daily AS
SELECT r.*
  FROM daily.channel_funnel r
 WHERE NOT EXISTS (SELECT FROM daily.stale_day s WHERE s.day = r.day)
UNION ALL
SELECT * FROM daily.channel_funnel_now;

COMMENT ON VIEW analytics.channel_funnel_daily IS 'Per UTC day (of each message''s first event), API and channel: sent, delivered, read, failed, rates and latency percentiles.';
COMMENT ON COLUMN analytics.channel_funnel_daily.api IS 'The API whose callbacks reported the messages: dispatch or messages.';
COMMENT ON COLUMN analytics.channel_funnel_daily.day IS 'UTC date of the message''s first event.';
COMMENT ON COLUMN analytics.channel_funnel_daily.channel IS 'sms, mms, messenger, viber_service_msg, whatsapp or rcs (analytics.channel_name: one name across both APIs).';
COMMENT ON COLUMN analytics.channel_funnel_daily.sent IS 'Messages seen (any status).';
COMMENT ON COLUMN analytics.channel_funnel_daily.delivered IS 'Messages whose status is delivered or read (read counts as delivered), as GET /messages says.';
COMMENT ON COLUMN analytics.channel_funnel_daily.read IS 'Messages whose status is read.';
COMMENT ON COLUMN analytics.channel_funnel_daily.failed IS 'Messages whose status is rejected or undeliverable (never delivered, by callback or final report).';
COMMENT ON COLUMN analytics.channel_funnel_daily.delivery_rate IS 'delivered / sent.';
COMMENT ON COLUMN analytics.channel_funnel_daily.read_rate IS 'read / sent.';
COMMENT ON COLUMN analytics.channel_funnel_daily.median_seconds_to_delivered IS 'Median seconds from submitted to delivered (messages with both times).';
COMMENT ON COLUMN analytics.channel_funnel_daily.p95_seconds_to_delivered IS '95th percentile of seconds from submitted to delivered.';
COMMENT ON COLUMN analytics.channel_funnel_daily.median_seconds_to_read IS 'Median seconds from submitted to read.';
COMMENT ON COLUMN analytics.channel_funnel_daily.p95_seconds_to_read IS '95th percentile of seconds from submitted to read.';
