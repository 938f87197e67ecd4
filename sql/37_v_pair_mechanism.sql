-- Per pair, score and feature: the activation and weight parts of the score through the policy's features
-- (source 'policy'; the intercept's uniform push as 'policy-intercept', feature -1), and the features where the
-- pair's residual harm lands, within harmful and within harmless probes (source 'landing', score 'harm';
-- weight_part is minus the landing). The recommended score is also split over every SAE feature through a
-- ridge fit of the pair's own shift pattern (source 'effect-fit', score = its name; the
-- other features summed as 'effect-fit-other', feature -2; the uniform push as 'effect-fit-uniform', feature -1):
-- a pair's rows of one score and one split sum to the split's estimate of the score.
CREATE OR REPLACE VIEW smda.v_pair_mechanism AS
SELECT m.pair_id, m.batch_id, m.score, m.feature_id,
       coalesce(l.label, CASE WHEN m.feature_id = -1 THEN 'uniform push (no feature)' WHEN m.feature_id = -2 THEN 'other features' END,
                '[' || e.category || '] ' || e.marked_text) AS label,
       m.activation_part, m.weight_part, m.share, m.rank, m.source, e.marked_text AS top_probe, e.activation AS top_activation
FROM smda.pair_mechanism AS m
LEFT JOIN smda.feature_labels AS l ON l.feature_id = m.feature_id
LEFT JOIN smda.v_feature_examples AS e ON e.feature_id = m.feature_id AND e.rank = 1
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = m.batch_id AND sb.status = 'superseded')
  AND m.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only
