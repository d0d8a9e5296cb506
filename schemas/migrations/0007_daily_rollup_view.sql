-- The daily roll-up becomes a view that sums the hourly totals (issue 12: one round trip less
-- per batch). The daily totals were recomputed from the hourly ones by every write, in a second
-- INSERT ... SELECT after the hourly one; hourly totals never expire, so summing them when read
-- gives the same figures, with nothing to keep in step.

CREATE OR REPLACE VIEW bad_case_rollup_1d AS
SELECT
    day AS window_start, tier, category, locale, position_bucket, model_version,
    sum(sampled) AS sampled, sum(bad) AS bad, sum(sum_w) AS sum_w, sum(sum_w_bad) AS sum_w_bad,
    sum(sum_w2) AS sum_w2
FROM
(
    SELECT
        toStartOfDay(window_start) AS day, tier, category, locale, position_bucket, model_version,
        sampled, bad, sum_w, sum_w_bad, sum_w2
    FROM bad_case_totals_1h FINAL
)
GROUP BY day, tier, category, locale, position_bucket, model_version
HAVING sampled > 0;

DROP TABLE IF EXISTS bad_case_totals_1d;
