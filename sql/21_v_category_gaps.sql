-- One row per (probe category, harmful flag).
-- mean_* are means over the category's probes; refusal_gap = mean_refusal_prob minus the
-- unweighted mean of mean_refusal_prob over categories with the same harmful flag.
-- top_features: the 3 policy features with the largest |mean contribution| (Z_ij * beta_j summed
-- over the category's probes, divided by n), e.g. "12 [refusal words] (+0.31); 7 (-0.12)".
CREATE OR REPLACE VIEW smda.v_category_gaps AS
WITH probes AS (
    SELECT p.probe_id, p.category, p.harmful, s.refusal_prob, s.behaviour, s.predicted
    FROM smda.probes AS p
    LEFT JOIN smda.probe_scores AS s ON s.probe_id = p.probe_id
),
cats AS (
    SELECT category, harmful, count(*) AS n,
           avg(refusal_prob) AS mean_refusal_prob,
           avg(behaviour) AS mean_behaviour,
           avg(predicted) AS mean_predicted
    FROM probes
    GROUP BY category, harmful
),
feat AS (
    SELECT pr.category, pr.harmful, c.feature_id,
           sum(c.contribution) / any_value(k.n) AS mean_contribution
    FROM smda.probe_contributions AS c
    JOIN probes AS pr ON pr.probe_id = c.probe_id
    JOIN cats AS k ON k.category IS NOT DISTINCT FROM pr.category AND k.harmful IS NOT DISTINCT FROM pr.harmful
    GROUP BY pr.category, pr.harmful, c.feature_id
),
ranked AS (
    SELECT f.*, l.label,
           row_number() OVER (PARTITION BY f.category, f.harmful
                              ORDER BY abs(f.mean_contribution) DESC, f.feature_id) AS r
    FROM feat AS f
    LEFT JOIN smda.feature_labels AS l ON l.feature_id = f.feature_id
),
top AS (
    SELECT category, harmful,
           string_agg(CAST(feature_id AS VARCHAR)
                      || CASE WHEN label IS NULL THEN '' ELSE ' [' || label || ']' END
                      || ' (' || printf('%+.2f', mean_contribution) || ')', '; ' ORDER BY r) AS top_features
    FROM ranked
    WHERE r <= 3
    GROUP BY category, harmful
)
SELECT c.category, c.harmful, c.n, c.mean_refusal_prob, c.mean_behaviour, c.mean_predicted,
       t.top_features,
       c.mean_refusal_prob - avg(c.mean_refusal_prob) OVER (PARTITION BY c.harmful) AS refusal_gap
FROM cats AS c
LEFT JOIN top AS t ON t.category IS NOT DISTINCT FROM c.category AND t.harmful IS NOT DISTINCT FROM c.harmful
ORDER BY c.harmful DESC, c.mean_refusal_prob, c.category;
