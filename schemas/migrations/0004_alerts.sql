-- Alerts on bad-case-rate spikes (relmon/alerts). One row per alert and change (fired, updated,
-- resolved); the newest row of an alert_id wins (ReplacingMergeTree on updated_at, read FINAL).
-- Rates are weighted (Horvitz-Thompson) with 95% Wilson intervals on the effective sample size.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    status LowCardinality(String),
    dimension LowCardinality(String),
    value String,
    started_at DateTime64(3, 'UTC'),
    last_window DateTime64(3, 'UTC'),
    resolved_at Nullable(DateTime64(3, 'UTC')),
    window_s UInt32,
    observed_rate Float64,
    observed_low Float64,
    observed_high Float64,
    observed_sampled UInt64,
    observed_n_eff Float64,
    baseline_rate Float64,
    baseline_low Float64,
    baseline_high Float64,
    baseline_sampled UInt64,
    baseline_n_eff Float64,
    peak_rate Float64,
    z Float64,
    p_value Float64,
    detectors Array(String),
    top_queries String,
    examples String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY alert_id
TTL toDateTime(updated_at) + INTERVAL 180 DAY;
