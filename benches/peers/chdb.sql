-- The attribd job as one ClickHouse batch, run in chDB (benches/peers/run.py; placeholders in
-- braces). Statements are separated by a semicolon at the end of a line; run.py times each one.
-- Same input contract and output layout as attribd where a batch engine can follow it; what it
-- leaves out is listed in docs/capacity.md ("Against a batch SQL engine").
--
-- Why LineAsString + JSONExtract and not the JSONEachRow reader: with
-- input_format_allow_errors_ratio, JSONEachRow resynchronises badly after a malformed line (a
-- truncated line swallows the next, valid one; an unclosed array read "as string" swallowed half
-- of a test file) and it accepts invalid UTF-8. Reading lines and parsing each with simdjson
-- (isValidJSON + one JSONExtract into a typed tuple) is exact and, measured here, as fast.

SET max_threads = {threads};
SET join_use_nulls = 1;
SET output_format_parquet_compression_method = 'zstd';
SET output_format_compression_level = 1;

-- 1. Clicks. _row_number is the line number, so "first click" means first in the file.
CREATE TABLE clicks_in ENGINE = Memory AS
WITH JSONExtract(line, 'Tuple(click_id Nullable(String), ts Nullable(String),
        tenant_id Nullable(String), offer_id Nullable(String), affiliate_id Nullable(String),
        country Nullable(String), device Nullable(String), os Nullable(String),
        ip Nullable(String), user_agent Nullable(String), referrer Nullable(String),
        sub1 Nullable(String), sub2 Nullable(String), sub3 Nullable(String),
        sub4 Nullable(String), sub5 Nullable(String))') AS r
SELECT _row_number AS rn,
       assumeNotNull(r.click_id) AS click_id,
       ifNull(fromUnixTimestamp64Milli(toInt64OrNull(r.ts), 'UTC'),
              parseDateTime64BestEffortOrNull(r.ts, 3, 'UTC')) AS ts_parsed,
       assumeNotNull(ts_parsed) AS ts,
       ifNull(r.tenant_id, '') AS tenant_id,
       assumeNotNull(r.offer_id) AS offer_id, assumeNotNull(r.affiliate_id) AS affiliate_id,
       upper(r.country) AS country, r.device AS device, r.os AS os, r.ip AS ip,
       r.user_agent AS user_agent, r.referrer AS referrer,
       r.sub1 AS sub1, r.sub2 AS sub2, r.sub3 AS sub3, r.sub4 AS sub4, r.sub5 AS sub5
FROM file('{clicks}', 'LineAsString')
WHERE isValidUTF8(line) AND isValidJSON(line)
  AND length(r.click_id) BETWEEN 1 AND 128
  AND r.offer_id IS NOT NULL AND r.affiliate_id IS NOT NULL
  AND ts_parsed BETWEEN toDateTime64('2000-01-01 00:00:00', 3, 'UTC') AND now64(3, 'UTC') + INTERVAL 7 DAY
  AND (r.country IS NULL OR r.country = '' OR match(r.country, '^[A-Za-z]{{2}}$'));

-- 2. Click dedup: the first line of every click_id (semi-join on the first row number).
CREATE TABLE clicks ENGINE = Memory AS
SELECT * EXCEPT (rn, ts_parsed) FROM clicks_in
WHERE rn IN (SELECT min(rn) FROM clicks_in GROUP BY click_id);

INSERT INTO FUNCTION file('{out}/clicks/{{_partition_id}}/part.parquet', 'Parquet')
PARTITION BY concat('dt=', toString(toDate(ts)), '/hour=', leftPad(toString(toHour(ts)), 2, '0'))
SELECT * FROM clicks;

-- 3. Postbacks: amount (number or numeric string) → Decimal(18,6), a missing ts is the time of
--    arrival (now), currency defaults to USD; metadata is kept as JSON text.
CREATE TABLE conv_in ENGINE = Memory AS
WITH JSONExtract(line, 'Tuple(click_id Nullable(String), external_id Nullable(String),
        tenant_id Nullable(String), amount Nullable(String), status Nullable(String),
        currency Nullable(String), ts Nullable(String), product_id Nullable(String),
        order_id Nullable(String), customer_id Nullable(String), metadata Nullable(String))') AS r
SELECT _row_number AS rn,
       assumeNotNull(r.click_id) AS click_id, assumeNotNull(r.external_id) AS external_id,
       ifNull(r.tenant_id, '') AS tenant_id,
       toDecimal64OrNull(r.amount, 6) AS amount_parsed, assumeNotNull(amount_parsed) AS amount,
       lower(assumeNotNull(r.status)) AS status,
       upper(if(ifNull(r.currency, '') = '', 'USD', r.currency)) AS currency,
       if(r.ts IS NULL, now64(3, 'UTC'),
          ifNull(fromUnixTimestamp64Milli(toInt64OrNull(r.ts), 'UTC'),
                 parseDateTime64BestEffortOrNull(r.ts, 3, 'UTC'))) AS ts_parsed,
       assumeNotNull(ts_parsed) AS ts,
       r.product_id AS product_id, r.order_id AS order_id, r.customer_id AS customer_id,
       r.metadata AS metadata
FROM file('{conversions}', 'LineAsString')
WHERE isValidUTF8(line) AND isValidJSON(line)
  AND length(r.click_id) BETWEEN 1 AND 128 AND length(r.external_id) BETWEEN 1 AND 128
  AND amount_parsed >= 0 AND status IN ('approved', 'pending', 'rejected')
  AND match(currency, '^[A-Z]{{3}}$')
  AND ts_parsed BETWEEN toDateTime64('2000-01-01 00:00:00', 3, 'UTC') AND now64(3, 'UTC') + INTERVAL 7 DAY
  AND (r.metadata IS NULL OR startsWith(r.metadata, '{{'));

-- 4. Postback dedup by (tenant_id, external_id): the first postback's fields, the latest
--    postback's status (by line order), the number of postbacks.
CREATE TABLE conv ENGINE = Memory AS
SELECT tenant_id, external_id, last_status AS status, postbacks,
       f.1 AS first_status, f.2 AS click_id, f.3 AS ts, f.4 AS amount, f.5 AS currency,
       f.6 AS product_id, f.7 AS order_id, f.8 AS customer_id, f.9 AS metadata
FROM (
    SELECT tenant_id, external_id, argMax(status, rn) AS last_status, count() AS postbacks,
           -- one argMin over a tuple: the first postback's fields together (NULLs included)
           argMin((status, click_id, ts, amount, currency, product_id, order_id, customer_id,
                   metadata), rn) AS f
    FROM conv_in GROUP BY tenant_id, external_id
);

-- 5. Attribution: the (deduplicated) click with the same click_id, 0 ≤ conv.ts − click.ts ≤ 30 d.
--    Only the clicks that some conversion names take part in the join.
CREATE TABLE conv_out ENGINE = Memory AS
SELECT v.tenant_id AS tenant_id, v.external_id AS external_id, v.status AS status,
       v.first_status AS first_status, v.postbacks AS postbacks, v.click_id AS click_id,
       v.ts AS ts, v.amount AS amount, v.currency AS currency, v.product_id AS product_id,
       v.order_id AS order_id, v.customer_id AS customer_id, v.metadata AS metadata,
       toBool(ifNull(v.ts >= k.ts AND v.ts <= k.ts + INTERVAL 30 DAY, false)) AS attributed,
       multiIf(k.ts IS NULL, 'unknown_click', NOT attributed, 'outside_window', NULL) AS reason,
       if(attributed, k.offer_id, '') AS offer_id,
       if(attributed, k.affiliate_id, '') AS affiliate_id,
       if(attributed, ifNull(k.country, ''), '') AS country,
       if(attributed, k.device, NULL) AS device,
       if(attributed, k.sub1, NULL) AS sub1, if(attributed, k.sub2, NULL) AS sub2,
       if(attributed, k.sub3, NULL) AS sub3, if(attributed, k.sub4, NULL) AS sub4,
       if(attributed, k.sub5, NULL) AS sub5,
       k.ts AS click_ts,
       toUnixTimestamp(v.ts) - toUnixTimestamp(k.ts) AS seconds_to_convert
FROM conv AS v
LEFT JOIN (SELECT click_id, ts, offer_id, affiliate_id, country, device,
                  sub1, sub2, sub3, sub4, sub5
           FROM clicks WHERE click_id IN (SELECT click_id FROM conv)) AS k
       ON k.click_id = v.click_id;

INSERT INTO FUNCTION file('{out}/conversions/{{_partition_id}}/part.parquet', 'Parquet')
PARTITION BY concat('dt=', toString(toDate(ts)), '/hour=', leftPad(toString(toHour(ts)), 2, '0'))
SELECT * FROM conv_out;

-- 6. Minute aggregates: clicks by the click's minute and dimensions (currency ''), conversions
--    by the first postback's minute, the click's dimensions (empty when unattributed) and the
--    currency; revenue = amounts of conversions whose current status is approved.
INSERT INTO FUNCTION file('{out}/stats_minute/{{_partition_id}}/part.parquet', 'Parquet')
PARTITION BY concat('dt=', toString(toDate(minute)), '/hour=', leftPad(toString(toHour(minute)), 2, '0'))
SELECT * FROM (
    SELECT toDateTime64(toStartOfMinute(ts), 3, 'UTC') AS minute, tenant_id, offer_id,
           affiliate_id, ifNull(clicks.country, '') AS country, '' AS currency,
           toInt64(count()) AS clicks, toInt64(0) AS conversions, toInt64(0) AS approved,
           toInt64(0) AS pending, toInt64(0) AS rejected, toDecimal64(0, 6) AS revenue,
           toInt64(0) AS unattributed
    FROM clicks GROUP BY minute, tenant_id, offer_id, affiliate_id, country
    UNION ALL
    SELECT toDateTime64(toStartOfMinute(ts), 3, 'UTC') AS minute, tenant_id, offer_id,
           affiliate_id, country, currency,
           toInt64(0), toInt64(count()), toInt64(countIf(status = 'approved')),
           toInt64(countIf(status = 'pending')), toInt64(countIf(status = 'rejected')),
           toDecimal64(sumIf(amount, status = 'approved'), 6), toInt64(countIf(NOT attributed))
    FROM conv_out GROUP BY minute, tenant_id, offer_id, affiliate_id, country, currency
);
