-- Chat requests the teacher spent on review cases that got no verdict (answers that stayed
-- malformed after the re-asks, or a budget that ran out between re-asks). With the calls stored
-- on each verdict, they let a restarted teacher seed its daily budget with everything it spent
-- today. Every attempt is a row: a replayed case that is asked again really spends again.
CREATE TABLE IF NOT EXISTS teacher_spend
(
    impression_id String,
    status LowCardinality(String),
    calls UInt32,
    spent_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (spent_at, impression_id)
TTL toDateTime(spent_at) + INTERVAL 7 DAY;
