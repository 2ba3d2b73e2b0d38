-- Aggregates by click date (cohorts): one row = the delta of one bucket (the hour of the click
-- × tenant × offer × affiliate × country × currency) from one attribd batch. Clicks count in
-- their own hour; an attributed conversion, its status changes and its duplicates count in the
-- hour of the click it was attributed to (unattributed conversions are not here: they have no
-- click). "Clicks on 1 Nov, how many converted within 7 days" is one query. Always query with
-- sum(), as the minute table. batch_id closes the sorting key (exactly-once inserts).
CREATE TABLE IF NOT EXISTS {db}.attribution_stats_click_hour
(
    click_hour DateTime,
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
PARTITION BY toYYYYMM(click_hour)
ORDER BY (tenant_id, click_hour, offer_id, affiliate_id, country, currency, batch_id)
{ttl_click_hour};

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.mv_batches_attribution_stats_click_hour
TO {db}.attribd_batches
AS SELECT batch_id, 'attribution_stats_click_hour' AS table_name, count() AS rows, now() AS inserted_at
FROM {db}.attribution_stats_click_hour GROUP BY batch_id
