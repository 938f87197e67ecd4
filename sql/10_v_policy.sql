-- One row per policy feature: the fitted coefficient (standardised units), its label and selection statistic,
-- and the probe text that lights it up most, strongest token marked.
CREATE OR REPLACE VIEW smda.v_policy AS
SELECT p.feature_id, p.rank, p.coef, l.label, p.mean, p.std, p.direction,
       p.statistic, p.statistic_name, l.source AS label_source, l.top_probes, e.marked_text AS top_example
FROM smda.policy_features AS p
LEFT JOIN smda.feature_labels AS l ON l.feature_id = p.feature_id
LEFT JOIN smda.v_feature_examples AS e ON e.feature_id = p.feature_id AND e.rank = 1
ORDER BY p.rank;
