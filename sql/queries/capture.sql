-- name: insert_raw_callback
-- Store an accepted callback; returns nothing when the same callback is already stored.
INSERT INTO raw_callback (kind, dedup_key, body, payload, content_type, message_uuid,
                          dispatch_uuid, event_at, received_at, last_received_at)
VALUES (%(kind)s, %(dedup_key)s, %(body)s, %(payload)s, %(content_type)s, %(message_uuid)s,
        %(dispatch_uuid)s, %(event_at)s, %(received_at)s, %(received_at)s)
ON CONFLICT ON CONSTRAINT raw_callback_dedup_key DO NOTHING
RETURNING id;

-- name: count_redelivery
-- Count one more delivery of an already stored callback.
UPDATE raw_callback
   SET deliveries = deliveries + 1,
       last_received_at = greatest(last_received_at, %(received_at)s)
 WHERE kind = %(kind)s AND dedup_key = %(dedup_key)s
RETURNING id;
