-- One row per flagged pair: what it moves (dominant feature) against what it was meant to teach, with its text and metadata.
CREATE OR REPLACE VIEW smda.v_interference AS
SELECT s.pair_id, s.batch_id, s.dominant_feature, l.label AS dominant_label, s.dominant_share,
       s.intended_features, s.interference, s.alignment, s.correctness_shift,
       p.prompt, p.response, p.metadata_json, p.content_hash, p.source_file, p.line
FROM smda.pair_summary AS s
LEFT JOIN smda.feature_labels AS l ON l.feature_id = s.dominant_feature
LEFT JOIN smda.sft_pairs AS p ON p.pair_id = s.pair_id AND p.batch_id IS NOT DISTINCT FROM s.batch_id
WHERE s.flagged AND NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = s.batch_id AND sb.status = 'superseded')
  AND s.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit)  -- rows of the current policy only
ORDER BY s.interference DESC, s.pair_id;
