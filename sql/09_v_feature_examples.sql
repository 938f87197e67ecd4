-- Each SAE feature's top probes by its strongest activation on a user token, with that token marked «so»:
-- what a person reads to know what a named feature stands for (rank 1 = the strongest).
CREATE OR REPLACE VIEW smda.v_feature_examples AS
SELECT e.feature_id, e.rank, e.probe_id, p.category, p.harmful, e.activation, e.token, e.marked_text, p.prompt
FROM smda.feature_examples AS e
JOIN smda.probes AS p USING (probe_id);
