-- One row per probe: its file fields, measured behaviour and the policy's prediction.
-- refused is the label the fit used (probe_scores), else the file's value.
CREATE OR REPLACE VIEW smda.v_probe_scores AS
SELECT p.probe_id, p.category, p.harmful, coalesce(s.refused, p.refused) AS refused,
       s.behaviour, s.refusal_prob, s.predicted, p.prompt, s.heldout, s.refused_source,
       p.refused AS refused_file, p.content_hash
FROM smda.probes AS p
LEFT JOIN smda.probe_scores AS s ON s.probe_id = p.probe_id
ORDER BY p.probe_id;
