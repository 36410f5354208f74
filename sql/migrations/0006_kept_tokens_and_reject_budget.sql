-- 0006: refused deliveries keep their tokens, and what they may store is bounded.
--
-- A callback refused because its token did not verify (a wrong or rotated
-- secret) is kept with the tokens it came with, so that `reprocess-rejects`
-- can verify them again once the secret is fixed. A few distinct tokens per
-- body are kept (the latest), never more.
ALTER TABLE rejected_callback ADD COLUMN tokens text[] NOT NULL DEFAULT '{}';

-- What refused deliveries have stored, per reason and hour. Past the budget a
-- delivery is still answered and counted here, but its body is not kept, so a
-- flood of junk cannot fill the disk.
CREATE TABLE reject_window (
    reason       text        NOT NULL,
    window_start timestamptz NOT NULL,
    -- Refused deliveries counted, and the bytes they offered (body and row).
    deliveries   integer     NOT NULL,
    bytes        bigint      NOT NULL,
    -- Of those, how many were not kept because the budget was spent.
    dropped      integer     NOT NULL,
    CONSTRAINT reject_window_pkey PRIMARY KEY (reason, window_start)
);
