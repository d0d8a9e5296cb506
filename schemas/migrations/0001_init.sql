-- Scored samples: one row per impression_id however often a record is replayed
-- (ReplacingMergeTree keeps the newest scored_at; readers use FINAL).
CREATE TABLE IF NOT EXISTS scored_impressions
(
    impression_id String,
    query_id String,
    query String,
    product_id String,
    title String,
    category LowCardinality(String),
    brand LowCardinality(String),
    position UInt16,
    event_time DateTime64(3, 'UTC'),
    locale LowCardinality(String),
    session_hash String,
    source LowCardinality(String),
    score Float32,
    threshold Float32,
    is_bad UInt8,
    model_version LowCardinality(String),
    sample_rate Float64,
    sample_weight Float64,
    scored_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMMDD(event_time)
ORDER BY impression_id;

-- UBI query records: query text of UBI impression events that arrive later or after a restart.
CREATE TABLE IF NOT EXISTS ubi_queries
(
    query_id String,
    user_query String,
    client_hash String,
    application LowCardinality(String),
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY query_id;

-- Bad-case rate per minute and segment. weighted_rate is the inverse-probability weighted
-- (Horvitz-Thompson ratio) estimate; the interval is a 95% Wilson interval on Kish's effective
-- sample size (sum w)^2 / sum w^2, which equals the sampled count when all weights are equal.
CREATE VIEW IF NOT EXISTS bad_case_rates AS
WITH 1.959963984540054 AS z
SELECT
    window_start,
    category,
    locale,
    model_version,
    sampled,
    bad,
    weighted_rate,
    n_eff,
    greatest(0., (weighted_rate + z * z / (2 * n_eff)
        - z * sqrt(weighted_rate * (1 - weighted_rate) / n_eff + z * z / (4 * n_eff * n_eff)))
        / (1 + z * z / n_eff)) AS ci_low,
    least(1., (weighted_rate + z * z / (2 * n_eff)
        + z * sqrt(weighted_rate * (1 - weighted_rate) / n_eff + z * z / (4 * n_eff * n_eff)))
        / (1 + z * z / n_eff)) AS ci_high
FROM
(
    SELECT
        toStartOfMinute(event_time) AS window_start,
        category,
        locale,
        model_version,
        count() AS sampled,
        sum(is_bad) AS bad,
        sum(sample_weight * is_bad) / sum(sample_weight) AS weighted_rate,
        pow(sum(sample_weight), 2) / sum(sample_weight * sample_weight) AS n_eff
    FROM scored_impressions FINAL
    GROUP BY window_start, category, locale, model_version
);
