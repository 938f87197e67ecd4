-- One row per flagged pair (calibrated: its harm lands away from its own request far more than for pairs of
-- its response type): the share and robust z of that harm, the feature that carries it, its text and metadata.
CREATE OR REPLACE VIEW smda.v_interference AS
SELECT s.pair_id, s.batch_id, s.interference, s.interference_z, s.harm_feature, s.harm_label, s.worst_group,
       s.dominant_feature, s.dominant_label, s.dominant_share, s.intended_features, s.score, s.alignment,
       s.correctness_shift, p.prompt, p.response, p.metadata_json, p.content_hash, p.source_file, p.line
FROM smda.v_pair_summary AS s
LEFT JOIN smda.sft_pairs AS p ON p.pair_id = s.pair_id AND p.batch_id IS NOT DISTINCT FROM s.batch_id
WHERE s.flagged
ORDER BY s.interference_z DESC, s.pair_id;
