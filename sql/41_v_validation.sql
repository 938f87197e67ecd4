-- One row per (check, method or score): LDS across random subsets, stability across SAE seeds.
CREATE OR REPLACE VIEW smda.v_validation AS
SELECT "check", method, score, n, spearman, detail, run_id, created_at
FROM smda.validation;
