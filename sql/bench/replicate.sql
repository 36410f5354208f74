-- Scale data for the view timings in BENCHMARKS.md (benchmarks/scale.py): copies of
-- workflows that `dispatch-ledger generate` stored, each copy with new ids and
-- its times moved back by whole periods, so that the copies spread over
-- `bands` periods of `days` days instead of piling onto the same ones. Run
-- in this order, in one transaction.
--
-- Every column of the tables copied is copied (tests/store/test_analytics.py checks
-- the lists against the tables); raw callbacks are not (the views never read
-- them), and copied discrepancies lose their link to one.
-- Copy k of an id is md5(id || '/' || k), written as a UUID.

-- name: copy_shifts
-- Copy number and how far back its times move, for `copies` copies.
CREATE TEMPORARY TABLE copy_shift ON COMMIT DROP AS
SELECT k, make_interval(days => %(days)s * (k %% %(bands)s)) AS back
  FROM generate_series(1, %(copies)s) k;

-- name: copy_dispatches
-- Every workflow, once per copy.
INSERT INTO dispatch (dispatch_uuid, template, status, reported_status, reported_at,
                      reported_price, reported_currency, final_report_received_at,
                      first_received_at, updated_at, decided_by, current_step, due_at,
                      decided_at, winning_step, winning_channel, steps_tried, message_channels,
                      computed_cost, cost_currency, first_event_at, api, awaiting_since,
                      last_event_at, items_total)
SELECT md5(d.dispatch_uuid || '/' || c.k)::uuid::text, d.template, d.status, d.reported_status,
       d.reported_at - c.back, d.reported_price, d.reported_currency,
       d.final_report_received_at - c.back, d.first_received_at - c.back,
       d.updated_at - c.back, d.decided_by, d.current_step, d.due_at - c.back,
       d.decided_at - c.back, d.winning_step, d.winning_channel, d.steps_tried,
       d.message_channels, d.computed_cost, d.cost_currency, d.first_event_at - c.back, d.api,
       d.awaiting_since - c.back, d.last_event_at - c.back, d.items_total
  FROM dispatch d CROSS JOIN copy_shift c;

-- name: copy_definitions
-- Their definitions.
INSERT INTO workflow_definition (dispatch_uuid, source, request, steps, recorded_at, api)
SELECT md5(w.dispatch_uuid || '/' || c.k)::uuid::text, w.source, w.request, w.steps,
       w.recorded_at - c.back, w.api
  FROM workflow_definition w CROSS JOIN copy_shift c;

-- name: copy_messages
-- Their messages, under the copied workflow.
INSERT INTO message (message_uuid, dispatch_uuid, channel, to_type, to_id, to_number, from_type,
                     from_id, from_number, status, submitted_at, delivered_at, read_at,
                     rejected_at, undeliverable_at, reported_status, reported_statuses, price,
                     currency, error_code, error_reason, error_at, first_received_at, updated_at,
                     first_event_at, delivery_reached_at, api, item_number, items_total,
                     client_ref)
SELECT md5(m.message_uuid || '/' || c.k)::uuid::text,
       md5(m.dispatch_uuid || '/' || c.k)::uuid::text, m.channel, m.to_type, m.to_id,
       m.to_number, m.from_type, m.from_id, m.from_number, m.status, m.submitted_at - c.back,
       m.delivered_at - c.back, m.read_at - c.back, m.rejected_at - c.back,
       m.undeliverable_at - c.back, m.reported_status, m.reported_statuses, m.price, m.currency,
       m.error_code,
       m.error_reason, m.error_at - c.back, m.first_received_at - c.back, m.updated_at - c.back,
       m.first_event_at - c.back, m.delivery_reached_at - c.back, m.api, m.item_number,
       m.items_total, m.client_ref
  FROM message m CROSS JOIN copy_shift c;

-- name: copy_reconciliations
-- What their final reports disagreed on.
INSERT INTO reconciliation (dispatch_uuid, kind, detail, recorded_at)
SELECT md5(r.dispatch_uuid || '/' || c.k)::uuid::text, r.kind, r.detail, r.recorded_at - c.back
  FROM reconciliation r CROSS JOIN copy_shift c;

-- name: copy_discrepancies
-- Their discrepancies, unlinked from raw callbacks.
INSERT INTO discrepancy (subject, subject_id, kind, detail, raw_callback_id, recorded_at)
SELECT x.subject, md5(x.subject_id || '/' || c.k)::uuid::text, x.kind, x.detail, NULL,
       x.recorded_at - c.back
  FROM discrepancy x CROSS JOIN copy_shift c;
