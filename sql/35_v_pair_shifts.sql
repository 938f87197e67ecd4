-- One row per (pair, probe, policy feature): dz in design-matrix units and dy of that probe.
CREATE OR REPLACE VIEW smda.v_pair_shifts AS
SELECT pair_id, batch_id, probe_id, feature_id, dz, dy
FROM smda.pair_shifts AS x
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = x.batch_id AND sb.status = 'superseded')
  AND x.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only
