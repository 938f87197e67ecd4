-- Top 10 pairs per policy feature by |delta_beta| under each pair's primary method (pair_summary.method);
-- rank 1 = largest |delta_beta|, ties broken by pair_id.
CREATE OR REPLACE VIEW smda.v_feature_top_pairs AS
SELECT feature_id, pair_id, delta_beta, rank, label, batch_id, method, contribution
FROM (
    SELECT a.feature_id, a.pair_id, a.delta_beta, l.label, a.batch_id, a.method, a.contribution,
           row_number() OVER (PARTITION BY a.feature_id ORDER BY abs(a.delta_beta) DESC, a.pair_id, a.batch_id) AS rank
    FROM smda.pair_attribution AS a
    JOIN smda.pair_summary AS s
      ON s.pair_id = a.pair_id AND s.batch_id IS NOT DISTINCT FROM a.batch_id AND s.method = a.method AND NOT coalesce(s.sample, false)
    LEFT JOIN smda.feature_labels AS l ON l.feature_id = a.feature_id
    WHERE a.delta_beta IS NOT NULL AND NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = a.batch_id AND sb.status = 'superseded')
      AND a.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit)  -- rows of the current policy only
) AS t
WHERE rank <= 10
ORDER BY feature_id, rank;
