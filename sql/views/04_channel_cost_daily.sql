-- analytics.channel_cost_daily: what each channel cost per day (UTC, by first event).
--
-- As channel_funnel_daily: daily.channel_cost_now computes the stale
-- days (and messages without an event time, whose day is null: never kept), a
-- keep stores the dated ones, the view gives both.
CREATE VIEW daily.channel_cost_now AS
SELECT (m.first_event_at AT TIME ZONE 'UTC')::date AS day,
       m.api,
       analytics.channel_name(m.channel) AS channel,
       m.currency,
       count(*) AS priced_messages,
       sum(m.price) AS cost
  -- Each stale day's messages, then those without a day, each read through
  -- message_first_event_day_idx (as channel_funnel_now).
  FROM (SELECT m.*
          FROM daily.days_computed AS stale
         CROSS JOIN LATERAL (SELECT * FROM message
                              WHERE (first_event_at AT TIME ZONE 'UTC')::date = stale.day
                             OFFSET 0) AS m
        UNION ALL
        SELECT * FROM message WHERE (first_event_at AT TIME ZONE 'UTC')::date IS NULL) AS m
 WHERE m.price IS NOT NULL AND m.channel IS NOT NULL
 GROUP BY 1, m.api, 3, m.currency;

CREATE VIEW analytics.channel_cost_daily AS
SELECT r.*
  FROM daily.channel_cost r
 WHERE NOT EXISTS (SELECT FROM daily.stale_day s WHERE s.day = r.day)
UNION ALL
SELECT * FROM daily.channel_cost_now;

COMMENT ON VIEW analytics.channel_cost_daily IS 'Per UTC day (of each message''s first event), channel and currency: priced messages and their exact total.';
COMMENT ON COLUMN analytics.channel_cost_daily.day IS 'UTC date of the message''s first event.';
COMMENT ON COLUMN analytics.channel_cost_daily.api IS 'The API whose callbacks reported the messages: dispatch or messages.';
COMMENT ON COLUMN analytics.channel_cost_daily.channel IS 'Channel of the messages (analytics.channel_name: one name across both APIs).';
COMMENT ON COLUMN analytics.channel_cost_daily.currency IS 'ISO 4217 currency of the prices.';
COMMENT ON COLUMN analytics.channel_cost_daily.priced_messages IS 'Messages with a price (one price per message).';
COMMENT ON COLUMN analytics.channel_cost_daily.cost IS 'Sum of their prices, exact (numeric).';
