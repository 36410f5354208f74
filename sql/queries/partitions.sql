-- The time-partitioned tables' partitions: listed, made ahead of time, dropped whole.
-- Statements with {table}, {partition}, {default}, {column}, {lower} or
-- {upper} get them filled in by app.store.partitions (our own identifiers and
-- bounds, quoted there), never input.

-- name: partitions
-- A partitioned table's partitions with their ranges (NULL: unbounded on that side), oldest first; the default partition last.
SELECT c.relname AS name,
       b.bound = 'DEFAULT' AS is_default,
       nullif(substring(b.bound FROM 'FROM \(''?([^'')]*)''?\)'), 'MINVALUE')::timestamptz AS lower,
       nullif(substring(b.bound FROM 'TO \(''?([^'')]*)''?\)'), 'MAXVALUE')::timestamptz AS upper
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
 CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
 WHERE i.inhparent = to_regclass(%(table)s)
 ORDER BY b.bound = 'DEFAULT', lower NULLS FIRST;

-- name: hold_partitions
-- Become, until the transaction ends, the one session changing this database's partitions (they wait for each other).
SELECT pg_advisory_xact_lock(%(key)s);

-- name: lock_briefly
-- Wait at most this long for a lock in front of the captures; retried by the caller.
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: new_partition
-- A table shaped as the partitioned one, for one range, with what the default partition held of it (attached below without a scan thanks to its CHECK).
CREATE TABLE {partition} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);
ALTER TABLE {partition} ADD CONSTRAINT partition_range
    CHECK ({column} >= {lower} AND {column} < {upper});
WITH moved AS (
    DELETE FROM {default} WHERE {column} >= {lower} AND {column} < {upper}
    RETURNING *
)
INSERT INTO {partition} OVERRIDING SYSTEM VALUE SELECT * FROM moved

-- name: attach_partition
-- Attach it (the parent is held SHARE UPDATE EXCLUSIVE: captures go on); its CHECK then says nothing more.
ALTER TABLE {table} ATTACH PARTITION {partition}
    FOR VALUES FROM ({lower}) TO ({upper});
ALTER TABLE {partition} DROP CONSTRAINT partition_range

-- name: count_partition
-- How many rows a partition holds (counted before it is dropped, outside any lock).
SELECT count(*) AS rows FROM {partition}

-- name: detach_partition
-- Take a partition out of its table (the parent is held ACCESS EXCLUSIVE until commit: milliseconds).
ALTER TABLE {table} DETACH PARTITION {partition}

-- name: keep_queued_raw_callbacks
-- Before a detached raw log partition is dropped, move its callbacks still queued (waiting or failed) to the default partition.
INSERT INTO {default} OVERRIDING SYSTEM VALUE
SELECT r.* FROM {partition} r JOIN apply_queue q ON q.raw_callback_id = r.id

-- name: keep_rejects
-- Before a detached rejects partition is dropped, move the rejects a prune keeps (unresolved unless asked, or refused since the cutoff) to the default partition.
INSERT INTO {default} OVERRIDING SYSTEM VALUE
SELECT * FROM {partition}
 WHERE NOT (last_received_at < %(cutoff)s AND (resolved_at IS NOT NULL OR %(unresolved)s))

-- name: drop_table
-- Drop a detached partition: its files go, no row by row deletion, no dead rows.
DROP TABLE {partition}

-- name: prune_rejects_batch
-- Delete up to `batch` rejects last received before the cutoff from one partition: resolved ones, and unresolved ones only when asked.
DELETE FROM {partition}
 WHERE id IN (SELECT id FROM {partition}
               WHERE last_received_at < %(cutoff)s
                 AND (resolved_at IS NOT NULL OR %(unresolved)s)
               ORDER BY id
               LIMIT %(batch)s)

-- name: prune_raw_batch
-- Delete up to `batch` applied raw callbacks dated before the cutoff from one partition that straddles it (queued ones stay).
DELETE FROM {partition}
 WHERE id IN (SELECT id FROM {partition} r
               WHERE event_at < %(cutoff)s
                 AND NOT EXISTS (SELECT FROM apply_queue q WHERE q.raw_callback_id = r.id)
               ORDER BY id
               LIMIT %(batch)s)
