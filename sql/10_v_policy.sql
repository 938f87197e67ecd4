-- One row per policy feature: the fitted coefficient (standardised units), its label and selection statistic.
CREATE OR REPLACE VIEW smda.v_policy AS
SELECT p.feature_id, p.rank, p.coef, l.label, p.mean, p.std, p.direction,
       p.statistic, p.statistic_name, l.source AS label_source, l.top_probes
FROM smda.policy_features AS p
LEFT JOIN smda.feature_labels AS l ON l.feature_id = p.feature_id
ORDER BY p.rank;
