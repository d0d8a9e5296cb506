-- Stratified sampling: the stratum and the plan of each row; raw rows expire after 30 days.
ALTER TABLE scored_impressions ADD COLUMN IF NOT EXISTS tier LowCardinality(String) DEFAULT 'tail' AFTER source;
ALTER TABLE scored_impressions ADD COLUMN IF NOT EXISTS position_bucket LowCardinality(String) DEFAULT '' AFTER tier;
ALTER TABLE scored_impressions ADD COLUMN IF NOT EXISTS plan_id String DEFAULT '' AFTER position_bucket;
ALTER TABLE scored_impressions MODIFY TTL toDateTime(event_time) + INTERVAL 30 DAY;

-- Sampling plans per partition and event-time epoch, stored before first use, and checkpoints of
-- each partition's popularity sketch (see streams/plans.py).
CREATE TABLE IF NOT EXISTS sampling_plans
(
    topic String,
    partition UInt32,
    epoch Int64,
    plan_id String,
    budget_factor Float64,
    tiers String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (topic, partition, epoch)
TTL toDateTime(created_at) + INTERVAL 30 DAY;

CREATE TABLE IF NOT EXISTS sketch_checkpoints
(
    topic String,
    partition UInt32,
    offset Int64,
    last_epoch Int64,
    state String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (topic, partition, offset)
TTL toDateTime(created_at) + INTERVAL 1 DAY;

-- Hourly and daily roll-ups, filled by materialized views as rows arrive. The worker writes each
-- impression once (it skips rows already stored), so the sums count each impression once.
CREATE TABLE IF NOT EXISTS bad_case_rollup_1h
(
    window_start DateTime('UTC'),
    tier LowCardinality(String),
    category LowCardinality(String),
    locale LowCardinality(String),
    position_bucket LowCardinality(String),
    model_version LowCardinality(String),
    sampled UInt64,
    bad UInt64,
    sum_w Float64,
    sum_w_bad Float64,
    sum_w2 Float64
)
ENGINE = SummingMergeTree
ORDER BY (window_start, tier, category, locale, position_bucket, model_version);

CREATE TABLE IF NOT EXISTS bad_case_rollup_1d AS bad_case_rollup_1h
ENGINE = SummingMergeTree
ORDER BY (window_start, tier, category, locale, position_bucket, model_version);

CREATE MATERIALIZED VIEW IF NOT EXISTS bad_case_rollup_1h_mv TO bad_case_rollup_1h AS
SELECT
    toStartOfHour(event_time) AS window_start, tier, category, locale, position_bucket,
    model_version, count() AS sampled, sum(is_bad) AS bad, sum(sample_weight) AS sum_w,
    sum(sample_weight * is_bad) AS sum_w_bad, sum(sample_weight * sample_weight) AS sum_w2
FROM scored_impressions
GROUP BY window_start, tier, category, locale, position_bucket, model_version;

CREATE MATERIALIZED VIEW IF NOT EXISTS bad_case_rollup_1d_mv TO bad_case_rollup_1d AS
SELECT
    toStartOfDay(event_time) AS window_start, tier, category, locale, position_bucket,
    model_version, count() AS sampled, sum(is_bad) AS bad, sum(sample_weight) AS sum_w,
    sum(sample_weight * is_bad) AS sum_w_bad, sum(sample_weight * sample_weight) AS sum_w2
FROM scored_impressions
GROUP BY window_start, tier, category, locale, position_bucket, model_version;

-- Wilson 95% score interval of a proportion p on (effective) sample size n; relmon/stats.py
-- computes the same in Python.
CREATE FUNCTION IF NOT EXISTS relmon_wilson_low AS (p, n) ->
    greatest(0., (p + 3.8414588206941254 / (2 * n)
        - 1.959963984540054 * sqrt(p * (1 - p) / n + 3.8414588206941254 / (4 * n * n)))
        / (1 + 3.8414588206941254 / n));
CREATE FUNCTION IF NOT EXISTS relmon_wilson_high AS (p, n) ->
    least(1., (p + 3.8414588206941254 / (2 * n)
        + 1.959963984540054 * sqrt(p * (1 - p) / n + 3.8414588206941254 / (4 * n * n)))
        / (1 + 3.8414588206941254 / n));

-- Rates by every segment: Horvitz-Thompson ratio estimate, Wilson interval on Kish's effective
-- sample size (sum w)^2 / sum w^2; `judged` = an effective sample of at least 30 (thinner windows
-- are shown but not judged). Per minute from the raw rows; per hour and day from the roll-ups.
DROP VIEW IF EXISTS bad_case_rates;
CREATE VIEW bad_case_rates AS
SELECT
    toStartOfMinute(event_time) AS window_start, tier, category, locale, position_bucket,
    model_version,
    count() AS sampled,
    sum(is_bad) AS bad,
    sum(sample_weight * is_bad) / sum(sample_weight) AS weighted_rate,
    pow(sum(sample_weight), 2) / sum(sample_weight * sample_weight) AS n_eff,
    relmon_wilson_low(weighted_rate, n_eff) AS ci_low,
    relmon_wilson_high(weighted_rate, n_eff) AS ci_high,
    n_eff >= 30 AS judged
FROM scored_impressions FINAL
GROUP BY window_start, tier, category, locale, position_bucket, model_version;

CREATE VIEW IF NOT EXISTS bad_case_rates_1h AS
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sum(sampled) AS sampled,
    sum(bad) AS bad,
    sum(sum_w_bad) / sum(sum_w) AS weighted_rate,
    pow(sum(sum_w), 2) / sum(sum_w2) AS n_eff,
    relmon_wilson_low(weighted_rate, n_eff) AS ci_low,
    relmon_wilson_high(weighted_rate, n_eff) AS ci_high,
    n_eff >= 30 AS judged
FROM bad_case_rollup_1h
GROUP BY window_start, tier, category, locale, position_bucket, model_version;

CREATE VIEW IF NOT EXISTS bad_case_rates_1d AS
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sum(sampled) AS sampled,
    sum(bad) AS bad,
    sum(sum_w_bad) / sum(sum_w) AS weighted_rate,
    pow(sum(sum_w), 2) / sum(sum_w2) AS n_eff,
    relmon_wilson_low(weighted_rate, n_eff) AS ci_low,
    relmon_wilson_high(weighted_rate, n_eff) AS ci_high,
    n_eff >= 30 AS judged
FROM bad_case_rollup_1d
GROUP BY window_start, tier, category, locale, position_bucket, model_version;
