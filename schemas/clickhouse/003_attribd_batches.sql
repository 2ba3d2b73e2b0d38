-- Committed batches: one row per INSERT attribd made. Materialized views on the two data
-- tables (below) write it from the inserted block itself, only after the block is in the
-- table, so "a batch id is here" means "its rows are in the table". attribd looks a batch id
-- up in the data before a retry, and after a crash deletes its instance's batches of the
-- epochs after the checkpoint it resumes from (here and in the data tables).
CREATE TABLE IF NOT EXISTS {db}.attribd_batches
(
    batch_id String,
    table_name String,
    rows UInt64,
    inserted_at DateTime
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(inserted_at)
ORDER BY (table_name, batch_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_batches_attribution_stats_minute
TO {db}.attribd_batches
AS SELECT batch_id, 'attribution_stats_minute' AS table_name, count() AS rows, now() AS inserted_at
FROM {db}.attribution_stats_minute GROUP BY batch_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_batches_conversions
TO {db}.attribd_batches
AS SELECT batch_id, 'conversions' AS table_name, count() AS rows, now() AS inserted_at
FROM {db}.conversions GROUP BY batch_id
