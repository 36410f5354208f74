-- 0014: each definition's number of steps, readable without its documents.
--
-- The failover views leave a workflow's last step out (it cannot fail over),
-- and learn which step is last from its definition. They read
-- jsonb_array_length(steps), so every such query scanned the whole
-- definition table, request documents and all: 1.5 GB for a million
-- workflows. The count is now a column, kept by PostgreSQL itself, and an
-- index that carries it lets the views read it alone (65 MB): the failover
-- rates over a million workflows in 1.45 s instead of 2.53 (BENCHMARKS.md,
-- analyst views). The index is read alone only where the table's visibility
-- map says so, and the rewrite clears that map: `migrate` vacuums the table
-- once this has committed (4 s for a million definitions).
-- vacuum after: workflow_definition
--
-- Adding a stored column rewrites the table: 11 s for a million definitions
-- on the benchmark machine, index included, during which reading a workflow,
-- recording a definition and applying callbacks wait (captures do not).
ALTER TABLE workflow_definition
    ADD COLUMN step_count integer GENERATED ALWAYS AS (
        CASE WHEN jsonb_typeof(steps) = 'array' THEN jsonb_array_length(steps) END
    ) STORED;
COMMENT ON COLUMN workflow_definition.step_count IS
    'How many steps the definition has (its steps'' length), kept by PostgreSQL.';

CREATE INDEX workflow_definition_step_count_idx
    ON workflow_definition (dispatch_uuid) INCLUDE (step_count);
