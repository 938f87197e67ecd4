-- One row per SFT pair: alignment with the policy, the dominant feature and the interference flag.
CREATE OR REPLACE VIEW smda.v_pair_summary AS
SELECT s.pair_id, s.batch_id, s.alignment, s.alignment_refit, s.alignment_linear, s.correctness_shift,
       s.dy_harmful, s.dy_harmless, s.active_flips, s.dominant_feature, l.label AS dominant_label,
       s.dominant_share, s.intended_features, s.interference, s.flagged, s.seconds, s.method,
       p.content_hash
FROM smda.pair_summary AS s
LEFT JOIN smda.feature_labels AS l ON l.feature_id = s.dominant_feature
LEFT JOIN smda.sft_pairs AS p ON p.pair_id = s.pair_id AND p.batch_id IS NOT DISTINCT FROM s.batch_id
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = s.batch_id AND sb.status = 'superseded')
  AND s.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only
