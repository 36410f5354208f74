-- 0003: the analytics schema (its views live in sql/views/), and raw callbacks that retention may prune.

CREATE SCHEMA analytics;
COMMENT ON SCHEMA analytics IS 'Views for analysts: a stable contract, documented in sql/README.md.';

-- Pruning an old raw callback must leave what referred to it in place.
ALTER TABLE discrepancy
    DROP CONSTRAINT discrepancy_raw_callback_id_fkey,
    ADD CONSTRAINT discrepancy_raw_callback_id_fkey
        FOREIGN KEY (raw_callback_id) REFERENCES raw_callback (id) ON DELETE SET NULL;
ALTER TABLE rejected_callback
    DROP CONSTRAINT rejected_callback_raw_callback_id_fkey,
    ADD CONSTRAINT rejected_callback_raw_callback_id_fkey
        FOREIGN KEY (raw_callback_id) REFERENCES raw_callback (id) ON DELETE SET NULL;
-- Foreign keys are checked through an index on the referencing side when rows are deleted.
CREATE INDEX discrepancy_raw_callback_id_idx ON discrepancy (raw_callback_id)
    WHERE raw_callback_id IS NOT NULL;
CREATE INDEX rejected_callback_raw_callback_id_idx ON rejected_callback (raw_callback_id)
    WHERE raw_callback_id IS NOT NULL;
