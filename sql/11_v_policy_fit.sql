-- One row per policy fit (newest first); policy_version is the version the pair rows in the pair views were
-- computed against, warnings the fit's doubtful signs (k ≥ n, λ at the edge of its grid, no gain over the majority).
CREATE OR REPLACE VIEW smda.v_policy_fit AS
SELECT "lambda", "lambda" AS ridge_lambda, r2, loo_r2, accuracy, majority_baseline, intercept, threshold, n_probes, k,
       preset, model, sae, hook, position, behaviour, design, dtype, formula, score_name, fitted_at, policy_version, warnings
FROM smda.policy_fit
ORDER BY fitted_at DESC;
