-- The attribd job as one DuckDB batch (benches/peers/run.py runs it; placeholders in braces).
-- Statements are separated by a semicolon at the end of a line; run.py times each one.
-- Same input contract and output layout as attribd where a batch engine can follow it; what it
-- leaves out is listed in docs/capacity.md ("Against a batch SQL engine").

SET threads = {threads};
SET TimeZone = 'UTC';
-- The CTAS below must keep file order: rowid is then the line order of the parsed records,
-- which is what "first postback" / "latest status" / "first click" mean.
SET preserve_insertion_order = true;

-- 1. Clicks: the native NDJSON reader with an explicit schema. ignore_errors turns a line that
--    is not JSON (or not UTF-8) into an all-NULL row, which the required-field checks drop.
--    `ts` is an RFC 3339 string or epoch milliseconds, so it is read as text and cast.
CREATE TEMP TABLE clicks_in AS
SELECT * FROM (
    SELECT click_id,
           coalesce(make_timestamptz(TRY_CAST(ts AS BIGINT) * 1000), TRY_CAST(ts AS TIMESTAMPTZ)) AS ts,
           coalesce(tenant_id, '') AS tenant_id, offer_id, affiliate_id, upper(country) AS country,
           device, os, ip, user_agent, referrer, sub1, sub2, sub3, sub4, sub5
    FROM read_json('{clicks}', format = 'newline_delimited', ignore_errors = true,
                   maximum_object_size = 65536,
                   columns = {{click_id: 'VARCHAR', ts: 'VARCHAR', tenant_id: 'VARCHAR',
                              offer_id: 'VARCHAR', affiliate_id: 'VARCHAR', country: 'VARCHAR',
                              device: 'VARCHAR', os: 'VARCHAR', ip: 'VARCHAR',
                              user_agent: 'VARCHAR', referrer: 'VARCHAR', sub1: 'VARCHAR',
                              sub2: 'VARCHAR', sub3: 'VARCHAR', sub4: 'VARCHAR', sub5: 'VARCHAR'}})
)
WHERE strlen(click_id) BETWEEN 1 AND 128
  AND offer_id IS NOT NULL AND affiliate_id IS NOT NULL
  AND ts BETWEEN TIMESTAMPTZ '2000-01-01 00:00:00+00' AND now() + INTERVAL 7 DAY
  AND (country IS NULL OR country = '' OR regexp_full_match(country, '[A-Z]{{2}}'));

-- 2. Click dedup: the first line of every click_id (a semi-join on the first rowid).
CREATE TEMP TABLE clicks AS
SELECT * FROM clicks_in
WHERE rowid IN (SELECT min(rowid) FROM clicks_in GROUP BY click_id);

COPY (
    SELECT click_id, ts, tenant_id, offer_id, affiliate_id, country, device, os, ip, user_agent,
           referrer, sub1, sub2, sub3, sub4, sub5,
           strftime(ts, '%Y-%m-%d') AS dt, strftime(ts, '%H') AS hour
    FROM clicks
) TO '{out}/clicks' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, PARTITION_BY (dt, hour));

-- 3. Postbacks: same reader; amount (number or numeric string) → DECIMAL(18,6), a missing ts
--    is the time of arrival (now), currency defaults to USD.
CREATE TEMP TABLE conv_in AS
SELECT * FROM (
    SELECT click_id, external_id, coalesce(tenant_id, '') AS tenant_id,
           TRY_CAST(amount AS DECIMAL(18, 6)) AS amount, lower(status) AS status,
           upper(coalesce(nullif(currency, ''), 'USD')) AS currency,
           CASE WHEN ts IS NULL THEN now()
                ELSE coalesce(make_timestamptz(TRY_CAST(ts AS BIGINT) * 1000), TRY_CAST(ts AS TIMESTAMPTZ))
           END AS ts,
           product_id, order_id, customer_id, metadata
    FROM read_json('{conversions}', format = 'newline_delimited', ignore_errors = true,
                   maximum_object_size = 65536,
                   columns = {{click_id: 'VARCHAR', external_id: 'VARCHAR', tenant_id: 'VARCHAR',
                              amount: 'VARCHAR', status: 'VARCHAR', currency: 'VARCHAR',
                              ts: 'VARCHAR', product_id: 'VARCHAR', order_id: 'VARCHAR',
                              customer_id: 'VARCHAR', metadata: 'JSON'}})
)
WHERE strlen(click_id) BETWEEN 1 AND 128 AND strlen(external_id) BETWEEN 1 AND 128
  AND amount >= 0 AND status IN ('approved', 'pending', 'rejected')
  AND regexp_full_match(currency, '[A-Z]{{3}}')
  AND ts BETWEEN TIMESTAMPTZ '2000-01-01 00:00:00+00' AND now() + INTERVAL 7 DAY
  AND (metadata IS NULL OR json_type(metadata) = 'OBJECT');

-- 4. Postback dedup by (tenant_id, external_id): the first postback's fields, the latest
--    postback's status (by line order), the number of postbacks.
CREATE TEMP TABLE conv AS
WITH k AS (
    SELECT tenant_id, external_id, min(rowid) AS first_row, arg_max(status, rowid) AS status,
           count(*) AS postbacks
    FROM conv_in GROUP BY tenant_id, external_id
)
SELECT c.tenant_id, c.external_id, k.status, c.status AS first_status, k.postbacks, c.click_id,
       c.ts, c.amount, c.currency, c.product_id, c.order_id, c.customer_id, c.metadata
FROM conv_in c JOIN k ON c.rowid = k.first_row;

-- 5. Attribution: the (deduplicated) click with the same click_id, 0 ≤ conv.ts − click.ts ≤ 30 d.
CREATE TEMP TABLE conv_out AS
SELECT v.tenant_id, v.external_id, v.status, v.first_status, v.postbacks, v.click_id, v.ts,
       v.amount, v.currency, v.product_id, v.order_id, v.customer_id, v.metadata,
       coalesce(v.ts BETWEEN k.ts AND k.ts + INTERVAL 30 DAY, false) AS attributed,
       CASE WHEN k.ts IS NULL THEN 'unknown_click'
            WHEN NOT attributed THEN 'outside_window' END AS reason,
       CASE WHEN attributed THEN k.offer_id ELSE '' END AS offer_id,
       CASE WHEN attributed THEN k.affiliate_id ELSE '' END AS affiliate_id,
       CASE WHEN attributed THEN coalesce(k.country, '') ELSE '' END AS country,
       CASE WHEN attributed THEN k.device END AS device,
       CASE WHEN attributed THEN k.sub1 END AS sub1,
       CASE WHEN attributed THEN k.sub2 END AS sub2,
       CASE WHEN attributed THEN k.sub3 END AS sub3,
       CASE WHEN attributed THEN k.sub4 END AS sub4,
       CASE WHEN attributed THEN k.sub5 END AS sub5,
       k.ts AS click_ts,
       epoch(v.ts)::BIGINT - epoch(k.ts)::BIGINT AS seconds_to_convert
FROM conv v LEFT JOIN clicks k ON k.click_id = v.click_id;

COPY (
    SELECT *, strftime(ts, '%Y-%m-%d') AS dt, strftime(ts, '%H') AS hour FROM conv_out
) TO '{out}/conversions' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, PARTITION_BY (dt, hour));

-- 6. Minute aggregates: clicks by the click's minute and dimensions (currency ''), conversions
--    by the first postback's minute, the click's dimensions (empty when unattributed) and the
--    currency; revenue = amounts of conversions whose current status is approved.
COPY (
    SELECT *, strftime(minute, '%Y-%m-%d') AS dt, strftime(minute, '%H') AS hour FROM (
        SELECT date_trunc('minute', ts) AS minute, tenant_id, offer_id, affiliate_id,
               coalesce(country, '') AS country, '' AS currency,
               count(*) AS clicks, 0::BIGINT AS conversions, 0::BIGINT AS approved,
               0::BIGINT AS pending, 0::BIGINT AS rejected, 0::DECIMAL(18, 6) AS revenue,
               0::BIGINT AS unattributed
        FROM clicks GROUP BY ALL
        UNION ALL
        SELECT date_trunc('minute', ts), tenant_id, offer_id, affiliate_id, country, currency,
               0, count(*), count_if(status = 'approved'), count_if(status = 'pending'),
               count_if(status = 'rejected'),
               coalesce(sum(amount) FILTER (WHERE status = 'approved'), 0)::DECIMAL(18, 6),
               count_if(NOT attributed)
        FROM conv_out GROUP BY ALL
    )
) TO '{out}/stats_minute' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, PARTITION_BY (dt, hour));
