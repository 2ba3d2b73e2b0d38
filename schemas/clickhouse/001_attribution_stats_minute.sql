-- Minute aggregates: one row = the delta of one bucket (minute × tenant × offer × affiliate ×
-- country × currency) from one attribd batch (the daemon pre-aggregates each batch). Always
-- query with sum(): a status change days later is written as delta rows (pending −1,
-- approved +1) in the original conversion's minute. batch_id closes the sorting key so rows of
-- different batches stay apart and a batch can always be found (exactly-once inserts).
-- Placeholders ({db}, {string}, {ttl_stats}, …) are filled by `attribd migrate` per server version.
CREATE TABLE IF NOT EXISTS {db}.attribution_stats_minute
(
    minute DateTime,
    tenant_id {string},
    offer_id {string},
    affiliate_id {string},
    country {string},
    currency {string},
    clicks Int64,
    unique_clicks Int64,
    duplicate_clicks Int64,
    conversions Int64,
    approved Int64,
    pending Int64,
    rejected Int64,
    revenue Decimal(18, 6),
    duplicate_conversions Int64,
    unattributed Int64,
    -- The attribd batch that wrote the row.
    batch_id String
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, minute, offer_id, affiliate_id, country, currency, batch_id)
{ttl_stats}
