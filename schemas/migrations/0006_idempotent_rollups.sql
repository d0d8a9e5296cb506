-- Roll-ups that cannot count an impression twice, and the impression ledger (issue 11).
--
-- The hourly and daily roll-ups were SummingMergeTrees filled by materialized views from every
-- block inserted into scored_impressions, so a row inserted twice (a replay whose duplicate
-- check missed, two workers overlapping in a rebalance) was summed twice, and a row that the
-- TTL deleted at once stayed counted. They are now totals per window and segment recomputed
-- from the deduplicated rows (scored_impressions FINAL for hours, the hourly totals for days)
-- by whoever writes rows (relmon.db.refresh_rollups), in ReplacingMergeTrees whose newest
-- recomputation wins. The old names become views over them.

DROP VIEW IF EXISTS bad_case_rollup_1h_mv;
DROP VIEW IF EXISTS bad_case_rollup_1d_mv;

CREATE TABLE IF NOT EXISTS bad_case_totals_1h
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
    sum_w2 Float64,
    computed_at DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (window_start, tier, category, locale, position_bucket, model_version);

CREATE TABLE IF NOT EXISTS bad_case_totals_1d AS bad_case_totals_1h
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (window_start, tier, category, locale, position_bucket, model_version);

-- The old hourly sums are kept as the oldest version: the only record of hours whose raw rows
-- have expired. (Run again after the views below exist, this copies the views' own values.)
INSERT INTO bad_case_totals_1h
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sum(sampled), sum(bad), sum(sum_w), sum(sum_w_bad), sum(sum_w2), toDateTime64(0, 9, 'UTC')
FROM bad_case_rollup_1h
GROUP BY window_start, tier, category, locale, position_bucket, model_version;

-- Hours whose raw rows are all still stored (29 days: the longest RELMON_MAX_EVENT_AGE_S) are
-- recomputed, which removes double counts; segments they no longer have get zero rows.
INSERT INTO bad_case_totals_1h
SELECT hour, tier, category, locale, position_bucket, model_version,
    sum(sampled), sum(bad), sum(sum_w), sum(sum_w_bad), sum(sum_w2), now64(9)
FROM
(
    SELECT
        toStartOfHour(event_time) AS hour, tier, category, locale, position_bucket,
        model_version, count() AS sampled, toUInt64(sum(is_bad)) AS bad,
        sum(sample_weight) AS sum_w, sum(sample_weight * is_bad) AS sum_w_bad,
        sum(sample_weight * sample_weight) AS sum_w2
    FROM scored_impressions FINAL
    WHERE event_time >= toStartOfHour(now() - INTERVAL 29 DAY)
    GROUP BY hour, tier, category, locale, position_bucket, model_version
    UNION ALL
    SELECT window_start AS hour, tier, category, locale, position_bucket, model_version,
        toUInt64(0), toUInt64(0), 0., 0., 0.
    FROM bad_case_totals_1h FINAL
    WHERE window_start >= toStartOfHour(now() - INTERVAL 29 DAY)
)
GROUP BY hour, tier, category, locale, position_bucket, model_version;

INSERT INTO bad_case_totals_1d
SELECT toStartOfDay(window_start) AS day, tier, category, locale, position_bucket, model_version,
    sum(sampled), sum(bad), sum(sum_w), sum(sum_w_bad), sum(sum_w2), now64(9)
FROM bad_case_totals_1h FINAL
GROUP BY day, tier, category, locale, position_bucket, model_version;

-- The names the dashboard and the rate views read: one row per window and segment.
CREATE OR REPLACE VIEW bad_case_rollup_1h AS
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sampled, bad, sum_w, sum_w_bad, sum_w2
FROM bad_case_totals_1h FINAL
WHERE sampled > 0;

CREATE OR REPLACE VIEW bad_case_rollup_1d AS
SELECT
    window_start, tier, category, locale, position_bucket, model_version,
    sampled, bad, sum_w, sum_w_bad, sum_w2
FROM bad_case_totals_1d FINAL
WHERE sampled > 0;

CREATE OR REPLACE VIEW bad_case_rates_1h AS
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

CREATE OR REPLACE VIEW bad_case_rates_1d AS
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

-- The impression ledger (streams/processor.py): an impression is recorded once its row is
-- stored, its roll-ups are refreshed and its review request (if any) is delivered. The worker's
-- duplicate check reads it, so it outlives the acceptance window (RELMON_MAX_EVENT_AGE_S, at
-- most 29 days) and never depends on rows the 30-day TTL of scored_impressions removed.
CREATE TABLE IF NOT EXISTS impression_ledger
(
    impression_id String,
    event_time DateTime64(3, 'UTC'),
    done_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(done_at)
ORDER BY impression_id
TTL toDateTime(event_time) + INTERVAL 35 DAY;

-- Rows stored before this migration had their review requests sent before they were stored.
INSERT INTO impression_ledger
SELECT impression_id, event_time, now64(3)
FROM scored_impressions FINAL;
