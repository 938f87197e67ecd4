-- One row per (probe, feature) with activation != 0: the raw SAE activation at the configured position.
CREATE OR REPLACE VIEW smda.v_features AS
SELECT probe_id, feature_id, activation
FROM smda.features
WHERE activation <> 0;
