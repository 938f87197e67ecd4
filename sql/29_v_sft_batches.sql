-- One row per SFT batch (one file's content): where it came from, how many pairs, and whether it is
-- current (active) or was replaced by a newer content of the same file (superseded, superseded_by).
-- The pair views below leave superseded batches out, and the rows of batches computed against another policy
-- than the current one (policy_version: until the batch is recomputed; smda stale lists them).
CREATE OR REPLACE VIEW smda.v_sft_batches AS
SELECT batch_id, source_file, content_hash, n_pairs, status, superseded_by, staged_at, loaded_at, policy_version
FROM smda.sft_batches
ORDER BY staged_at, batch_id;
