-- Fraud signals (`[fraud]`): the flags of each conversion (every version carries those of the
-- first) and the count of flagged conversions in both aggregate tables (0 in rows written
-- before).
ALTER TABLE {db}.conversions
    ADD COLUMN fraud_flags Array(String);

ALTER TABLE {db}.attribution_stats_minute
    ADD COLUMN flagged_conversions Int64;

ALTER TABLE {db}.attribution_stats_click_hour
    ADD COLUMN flagged_conversions Int64
