-- One row per SFT pair: the kind-free log-odds scores and the recommended `score` (higher = a better pair to keep),
-- the paper's alignment, behaviour shifts, the named harm feature, calibrated interference and the turn-1 flag.
CREATE OR REPLACE VIEW smda.v_pair_summary AS
SELECT s.pair_id, s.batch_id, s.score, s.keep_score, s.margin_shift, s.local_shift, s.worst_group_shift, s.worst_group,
       s.specific_shift, s.specific_group, s.harm_shift,
       s.screen_consistency, s.alignment, s.alignment_refit, s.alignment_linear, s.correctness_shift,
       s.dy_harmful, s.dy_harmless, s.active_flips, s.dominant_feature, l.label AS dominant_label,
       s.dominant_share, s.intended_features, s.interference, s.interference_z, s.flagged,
       s.interference_legacy, s.flagged_legacy, s.harm_feature, h.label AS harm_label, s.effect_fit_r2,
       s.response_refuses, s.seconds, s.method, s.policy_projection, p.content_hash
FROM smda.pair_summary AS s
LEFT JOIN smda.feature_labels AS l ON l.feature_id = s.dominant_feature
LEFT JOIN (SELECT feature_id, '[' || category || '] ' || marked_text AS label FROM smda.v_feature_examples WHERE rank = 1) AS h
       ON h.feature_id = s.harm_feature
LEFT JOIN smda.sft_pairs AS p ON p.pair_id = s.pair_id AND p.batch_id IS NOT DISTINCT FROM s.batch_id
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = s.batch_id AND sb.status = 'superseded')
  AND NOT coalesce(s.sample, false)  -- one row per pair: the configured tier's (the exact validation sample is in v_method_agreement)
  AND s.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only
