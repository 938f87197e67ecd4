-- One row per policy fit (newest first).
CREATE OR REPLACE VIEW smda.v_policy_fit AS
SELECT "lambda", "lambda" AS ridge_lambda, r2, loo_r2, accuracy, majority_baseline, intercept, threshold, n_probes, k,
       preset, model, sae, hook, position, behaviour, design, dtype, formula, score_name, fitted_at
FROM smda.policy_fit
ORDER BY fitted_at DESC;
