-- The probes where each SAE feature is most active (at the read position): a person's first look at what it reads.
CREATE OR REPLACE VIEW smda.v_feature_examples AS
SELECT feature_id, rank, probe_id, category, harmful, activation, prompt
FROM (SELECT f.feature_id, f.probe_id, p.category, p.harmful, f.activation, p.prompt,
             row_number() OVER (PARTITION BY f.feature_id ORDER BY f.activation DESC, f.probe_id) AS rank
      FROM smda.features AS f JOIN smda.probes AS p USING (probe_id))
WHERE rank <= 3;
