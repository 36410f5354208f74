-- 0023: workflows are no longer indexed by updated_at.
-- migrate: one statement at a time, outside a transaction
--
-- dispatch_updated_at_idx (0005) served the read API's list of recent
-- workflows until 0011 ordered it by last_event_at; since then nothing reads
-- it (no scan in two growth runs; prune-state finds its candidates in one
-- pass over the table), while every workflow update that is not HOT writes
-- it, and a workflow's row changes with most callbacks (its last event time,
-- which is indexed, so such updates are not HOT). Without it, applying on the
-- growth benchmark's database (5 million workflows) ran 1.2 times as fast
-- (BENCHMARKS.md). Dropped without holding the applier.

DROP INDEX CONCURRENTLY IF EXISTS dispatch_updated_at_idx;
