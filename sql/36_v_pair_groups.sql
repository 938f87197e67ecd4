-- Per pair and probe group: the behaviour shift, and each feature's activation / weight part of it.
CREATE OR REPLACE VIEW smda.v_pair_group_shift AS
SELECT pair_id, batch_id, "group", n_probes, dy, dp
FROM smda.pair_group_shift AS x
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = x.batch_id AND sb.status = 'superseded')
  AND x.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only

CREATE OR REPLACE VIEW smda.v_pair_group_effects AS
SELECT g.pair_id, g.batch_id, g."group", g.feature_id, l.label, g.activation_part, g.weight_part, g.dy
FROM smda.pair_group_effects AS g
LEFT JOIN smda.feature_labels AS l ON l.feature_id = g.feature_id
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = g.batch_id AND sb.status = 'superseded')
  AND g.policy_version IS NOT DISTINCT FROM (SELECT max(policy_version) FROM smda.policy_fit);  -- rows of the current policy only
