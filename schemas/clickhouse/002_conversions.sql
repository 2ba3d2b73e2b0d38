-- Raw conversions: one row per accepted version of a conversion (the first postback and each
-- applied status change). ReplacingMergeTree(version) keeps the newest version per
-- (tenant_id, external_id): query with FINAL (or argMax(…, version)) for the current state.
CREATE TABLE IF NOT EXISTS {db}.conversions
(
    tenant_id {string},
    external_id String,
    version UInt32,
    status {string},
    previous_status Nullable(String),
    click_id String,
    ts_ms Int64,
    ts {datetime_ms} MATERIALIZED {ts_from_ms},
    amount Decimal(18, 6),
    currency {string},
    product_id Nullable(String),
    order_id Nullable(String),
    customer_id Nullable(String),
    metadata Nullable(String),
    attributed UInt8,
    reason Nullable(String),
    offer_id {string},
    affiliate_id {string},
    country {string},
    device Nullable(String),
    sub1 Nullable(String),
    sub2 Nullable(String),
    sub3 Nullable(String),
    sub4 Nullable(String),
    sub5 Nullable(String),
    click_ts_ms Nullable(Int64),
    seconds_to_convert Nullable(Int64),
    -- The attribd batch that wrote the row.
    batch_id String
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(toDateTime(intDiv(ts_ms, 1000)))
ORDER BY (tenant_id, external_id)
{ttl_conversions}
