-- One row per (curation experiment, model variant): base, full, curated, oracle (every bad kind),
-- oracle:KIND (one bad kind), random_seed_N. A variant retrained with several seeds (curation.seeds) shows
-- the mean of its metrics, the spread of its F1 and how many seeds; smda.curation keeps each seed's row.
CREATE OR REPLACE VIEW smda.v_curation AS
SELECT experiment_id, any_value(rule) AS rule, variant, any_value(n_pairs) AS n_pairs,
       avg(correctness) AS correctness, avg(precision) AS precision, avg(recall) AS recall, avg(f1) AS f1,
       avg(refusal_accuracy) AS refusal_accuracy, coalesce(stddev_samp(f1), 0) AS f1_sd, count(*) AS seeds,
       any_value(dropped) AS dropped, arg_min(per_category, seed) AS per_category, min(created_at) AS created_at
FROM smda.curation
GROUP BY experiment_id, variant;
