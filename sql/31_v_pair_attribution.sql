-- One row per (pair, policy feature, method): the coefficient shift and its decomposition.
CREATE OR REPLACE VIEW smda.v_pair_attribution AS
SELECT a.pair_id, a.batch_id, a.feature_id, l.label, a.delta_beta, a.via_x, a.via_y, a.via_xy,
       a.contribution, a.method
FROM smda.pair_attribution AS a
LEFT JOIN smda.feature_labels AS l ON l.feature_id = a.feature_id
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = a.batch_id AND sb.status = 'superseded')
  AND a.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only
