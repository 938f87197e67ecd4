-- One row per (probe, feature, position) with activation != 0. position: the configured read position
-- (readout_info.position, e.g. end_of_turn: what the policy reads), or 'user_max': the feature's strongest
-- activation over the request's tokens (where a phrase in the request lights its features up).
CREATE OR REPLACE VIEW smda.v_features AS
SELECT probe_id, feature_id, activation,
       coalesce((SELECT max(position) FROM smda.readout_info), 'configured') AS position
FROM smda.features
WHERE activation <> 0
UNION ALL
SELECT probe_id, feature_id, activation, 'user_max' AS position
FROM smda.feature_maxima
WHERE activation <> 0;
