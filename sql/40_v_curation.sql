-- One row per (curation experiment, model variant): base, full, oracle, curated, random_seed_N.
CREATE OR REPLACE VIEW smda.v_curation AS
SELECT experiment_id, rule, variant, n_pairs, correctness, precision, recall, f1, refusal_accuracy,
       dropped, seed, per_category, created_at
FROM smda.curation;
