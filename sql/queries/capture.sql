-- name: insert_raw_callbacks
-- Store accepted callbacks, one VALUES row each ({rows}: app.pipeline.capture repeats the row); returns the rows it inserted, not those already stored.
INSERT INTO raw_callback (kind, dedup_key, body, payload, content_type, message_uuid,
                          dispatch_uuid, event_at, received_at, last_received_at)
VALUES {rows}
ON CONFLICT ON CONSTRAINT raw_callback_dedup_key DO NOTHING
RETURNING id, kind, dedup_key;

-- name: count_redelivery
-- Count one more delivery of an already stored callback (event_at, a function of the body, finds its partition).
UPDATE raw_callback
   SET deliveries = deliveries + 1,
       last_received_at = greatest(last_received_at, %(received_at)s)
 WHERE kind = %(kind)s AND dedup_key = %(dedup_key)s AND event_at = %(event_at)s
RETURNING id;
