-- The expected bad share (issue 10): beside the flagged rate, the roll-ups keep the weighted
-- sum of each row's P(bad), one minus its calibrated score, so the dashboard can show the mean
-- P(bad) of any window and segment: the estimate of the true bad share that errs less per
-- query than the flagged rate (README, "What the dashboard shows"). The sum is NaN for hours
-- whose raw rows expired before it existed: their expected share is unknown, not zero.

ALTER TABLE bad_case_totals_1h ADD COLUMN IF NOT EXISTS sum_w_pbad Float64 DEFAULT nan AFTER sum_w2;

-- Hours whose raw rows are all still stored (29 days) are recomputed with the new sum.
INSERT INTO bad_case_totals_1h
    (window_start, tier, category, locale, position_bucket, model_version,
     sampled, bad, sum_w, sum_w_bad, sum_w2, sum_w_pbad, computed_at)
SELECT hour, tier, category, locale, position_bucket, model_version,
    sum(sampled), sum(bad), sum(sum_w), sum(sum_w_bad), sum(sum_w2), sum(sum_w_pbad), now64(9)
FROM
(
    SELECT
        toStartOfHour(event_time) AS hour, tier, category, locale, position_bucket,
        model_version, count() AS sampled, toUInt64(sum(is_bad)) AS bad,
        sum(sample_weight) AS sum_w, sum(sample_weight * is_bad) AS sum_w_bad,
        sum(sample_weight * sample_weight) AS sum_w2,
        sum(sample_weight * least(greatest(1 - toFloat64(score), 0), 1)) AS sum_w_pbad
    FROM scored_impressions FINAL
    WHERE event_time >= toStartOfHour(now() - INTERVAL 29 DAY)
    GROUP BY hour, tier, category, locale, position_bucket, model_version
    UNION ALL
    SELECT window_start AS hour, tier, category, locale, position_bucket, model_version,
        toUInt64(0), toUInt64(0), 0., 0., 0., 0.
    FROM bad_case_totals_1h FINAL
    WHERE window_start >= toStartOfHour(now() - INTERVAL 29 DAY)
)
GROUP BY hour, tier, category, locale, position_bucket, model_version;

CREATE OR REPLACE VIEW bad_case_rollup_1h AS
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sampled, bad, sum_w, sum_w_bad, sum_w2, sum_w_pbad
FROM bad_case_totals_1h FINAL
WHERE sampled > 0;

CREATE OR REPLACE VIEW bad_case_rollup_1d AS
SELECT
    day AS window_start, tier, category, locale, position_bucket, model_version,
    sum(sampled) AS sampled, sum(bad) AS bad, sum(sum_w) AS sum_w, sum(sum_w_bad) AS sum_w_bad,
    sum(sum_w2) AS sum_w2, sum(sum_w_pbad) AS sum_w_pbad
FROM
(
    SELECT
        toStartOfDay(window_start) AS day, tier, category, locale, position_bucket, model_version,
        sampled, bad, sum_w, sum_w_bad, sum_w2, sum_w_pbad
    FROM bad_case_totals_1h FINAL
)
GROUP BY day, tier, category, locale, position_bucket, model_version
HAVING sampled > 0;

-- The rate views gain the expected share (a Wilson interval on the same effective sample
-- bounds its sampling error: see relmon.estimate.Sums.expected).
CREATE OR REPLACE VIEW bad_case_rates AS
SELECT
    toStartOfMinute(event_time) AS window_start, tier, category, locale, position_bucket,
    model_version,
    count() AS sampled,
    sum(is_bad) AS bad,
    sum(sample_weight * is_bad) / sum(sample_weight) AS weighted_rate,
    pow(sum(sample_weight), 2) / sum(sample_weight * sample_weight) AS n_eff,
    relmon_wilson_low(weighted_rate, n_eff) AS ci_low,
    relmon_wilson_high(weighted_rate, n_eff) AS ci_high,
    n_eff >= 30 AS judged,
    sum(sample_weight * least(greatest(1 - toFloat64(score), 0), 1)) / sum(sample_weight)
        AS expected_rate,
    relmon_wilson_low(expected_rate, n_eff) AS expected_low,
    relmon_wilson_high(expected_rate, n_eff) AS expected_high
FROM scored_impressions FINAL
GROUP BY window_start, tier, category, locale, position_bucket, model_version;

CREATE OR REPLACE VIEW bad_case_rates_1h AS
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sum(sampled) AS sampled,
    sum(bad) AS bad,
    sum(sum_w_bad) / sum(sum_w) AS weighted_rate,
    pow(sum(sum_w), 2) / sum(sum_w2) AS n_eff,
    relmon_wilson_low(weighted_rate, n_eff) AS ci_low,
    relmon_wilson_high(weighted_rate, n_eff) AS ci_high,
    n_eff >= 30 AS judged,
    sum(sum_w_pbad) / sum(sum_w) AS expected_rate,
    relmon_wilson_low(expected_rate, n_eff) AS expected_low,
    relmon_wilson_high(expected_rate, n_eff) AS expected_high
FROM bad_case_rollup_1h
GROUP BY window_start, tier, category, locale, position_bucket, model_version;

CREATE OR REPLACE VIEW bad_case_rates_1d AS
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sum(sampled) AS sampled,
    sum(bad) AS bad,
    sum(sum_w_bad) / sum(sum_w) AS weighted_rate,
    pow(sum(sum_w), 2) / sum(sum_w2) AS n_eff,
    relmon_wilson_low(weighted_rate, n_eff) AS ci_low,
    relmon_wilson_high(weighted_rate, n_eff) AS ci_high,
    n_eff >= 30 AS judged,
    sum(sum_w_pbad) / sum(sum_w) AS expected_rate,
    relmon_wilson_low(expected_rate, n_eff) AS expected_low,
    relmon_wilson_high(expected_rate, n_eff) AS expected_high
FROM bad_case_rollup_1d
GROUP BY window_start, tier, category, locale, position_bucket, model_version;
