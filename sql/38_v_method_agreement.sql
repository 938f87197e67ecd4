-- Per score (and per policy feature for Δβ and its pathways): how a cheaper tier (gradient, screen) agrees with
-- the exact tier on the exact validation sample of each batch: Spearman across pairs and median relative error.
-- Rows named '<pathway>:median' (feature_id NULL) hold the median over the policy's features.
CREATE OR REPLACE VIEW smda.v_method_agreement AS
SELECT a.score, a.feature_id, a.method, a.reference, a.n_pairs, a.spearman, a.median_rel_err, a.batch_id
FROM smda.method_agreement AS a
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = a.batch_id AND sb.status = 'superseded')
  AND a.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only
