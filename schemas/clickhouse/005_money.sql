-- Reporting currency, payouts and profit (`[money]`, `[payouts]`): the columns of the
-- conversions table (null when the pipeline has no [money]) and three measures of both
-- aggregate tables (0 in rows written before; SummingMergeTree sums them like the others).
ALTER TABLE {db}.conversions
    ADD COLUMN amount_reporting Nullable(Decimal(18, 6)),
    ADD COLUMN fx_rate Nullable(Decimal(18, 10)),
    ADD COLUMN fx_stale Nullable(UInt8),
    ADD COLUMN fx_missing Nullable(UInt8),
    ADD COLUMN payout Nullable(Decimal(18, 6)),
    ADD COLUMN profit Nullable(Decimal(18, 6));

ALTER TABLE {db}.attribution_stats_minute
    ADD COLUMN revenue_reporting Decimal(18, 6),
    ADD COLUMN payout Decimal(18, 6),
    ADD COLUMN profit Decimal(18, 6);

ALTER TABLE {db}.attribution_stats_click_hour
    ADD COLUMN revenue_reporting Decimal(18, 6),
    ADD COLUMN payout Decimal(18, 6),
    ADD COLUMN profit Decimal(18, 6)
