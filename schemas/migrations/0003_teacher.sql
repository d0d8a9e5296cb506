-- The teacher-review loop (relmon/teacher). review_queue: one row per review request consumed
-- from the review topic (replays replace, never add). verdicts: teacher (LLM) and human grades,
-- one row per (impression_id, judge, judge_id, prompt_version) however often a case is replayed
-- or relabelled (the newest judged_at wins). Each verdict carries the student's view of the pair
-- (score, threshold, flag) and the weights, so agreement and corrected rates read one table.
CREATE TABLE IF NOT EXISTS review_queue
(
    impression_id String,
    query_id String,
    query String,
    product_id String,
    title String,
    category LowCardinality(String),
    score Float32,
    threshold Float32,
    model_version LowCardinality(String),
    reason LowCardinality(String),
    priority Float64,
    sample_weight Float64,
    review_weight Float64,
    tier LowCardinality(String),
    locale LowCardinality(String),
    position UInt16,
    event_time DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY impression_id
TTL toDateTime(event_time) + INTERVAL 90 DAY;

CREATE TABLE IF NOT EXISTS verdicts
(
    impression_id String,
    judge LowCardinality(String),
    judge_id String,
    prompt_version LowCardinality(String),
    query String,
    product_id String,
    title String,
    category LowCardinality(String),
    tier LowCardinality(String),
    locale LowCardinality(String),
    position UInt16,
    reason LowCardinality(String),
    score Float32,
    threshold Float32,
    student_bad UInt8,
    model_version LowCardinality(String),
    sample_weight Float64,
    review_weight Float64,
    event_time DateTime64(3, 'UTC'),
    grade LowCardinality(String),
    is_bad UInt8,
    rationale String,
    cached UInt8,
    calls UInt16,
    latency_ms Float32,
    judged_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(judged_at)
ORDER BY (impression_id, judge, judge_id, prompt_version);
