-- 0004: per-workflow rollups of its messages, kept on the workflow's row.
--
-- The analytics views answered per-workflow questions by aggregating every
-- message on every query: 15-18 s at 1 million workflows and 3 million
-- messages. The service now refreshes these columns in the transaction that
-- changes a workflow's messages, while it holds the workflow's row lock (every
-- writer of a workflow's messages takes it first), so they are never stale.

ALTER TABLE dispatch
    ADD COLUMN steps_tried      integer     NOT NULL DEFAULT 0,
    ADD COLUMN message_channels text[]      NOT NULL DEFAULT '{}',
    ADD COLUMN computed_cost    numeric,
    ADD COLUMN cost_currency    text,
    ADD COLUMN first_event_at   timestamptz,
    ADD COLUMN winning_channel  text;

COMMENT ON COLUMN dispatch.steps_tried IS 'How many messages the workflow has.';
COMMENT ON COLUMN dispatch.message_channels IS
    'Channels of its messages (known channels only), in order of their first event.';
COMMENT ON COLUMN dispatch.computed_cost IS 'Sum of its messages'' prices; NULL when none is priced.';
COMMENT ON COLUMN dispatch.cost_currency IS 'Currency of computed_cost, or MIXED.';
COMMENT ON COLUMN dispatch.first_event_at IS 'Earliest event time among its messages.';
COMMENT ON COLUMN dispatch.winning_channel IS 'Channel of winning_step in the definition.';

-- Existing workflows get their rollups once, here.
UPDATE dispatch d
   SET steps_tried = r.steps_tried,
       message_channels = r.message_channels,
       computed_cost = r.computed_cost,
       cost_currency = r.cost_currency,
       first_event_at = r.first_event_at
  FROM (SELECT m.dispatch_uuid,
               count(*) AS steps_tried,
               coalesce(array_agg(m.channel ORDER BY least(m.submitted_at, m.delivered_at,
                                                           m.read_at, m.rejected_at,
                                                           m.undeliverable_at) NULLS LAST,
                                  m.message_uuid)
                          FILTER (WHERE m.channel IS NOT NULL), '{}') AS message_channels,
               sum(m.price) AS computed_cost,
               CASE WHEN min(m.currency) <> max(m.currency) THEN 'MIXED' ELSE min(m.currency) END
                   AS cost_currency,
               min(least(m.submitted_at, m.delivered_at, m.read_at, m.rejected_at,
                         m.undeliverable_at)) AS first_event_at
          FROM message m
         WHERE m.dispatch_uuid IS NOT NULL
         GROUP BY m.dispatch_uuid) r
 WHERE d.dispatch_uuid = r.dispatch_uuid;

UPDATE dispatch d
   SET winning_channel = w.steps -> (d.winning_step - 1) ->> 'channel'
  FROM workflow_definition w
 WHERE w.dispatch_uuid = d.dispatch_uuid AND d.winning_step IS NOT NULL;
