-- 0008: when raw callbacks were pruned, so that a rebuild from the raw log
-- can refuse to forget what they said.
CREATE TABLE raw_log_prune (
    id        bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT raw_log_prune_pkey PRIMARY KEY,
    pruned_at timestamptz NOT NULL,
    -- Raw callbacks received before this were deleted.
    cutoff    timestamptz NOT NULL,
    deleted   bigint      NOT NULL
);
