-- One row per user dataset table loaded with `smda metadata add` (or data.metadata in the config):
-- its join view (v_pair_summary_<name>), the key, what it matches on, and how many pairs matched.
CREATE OR REPLACE VIEW smda.v_dataset_metadata AS
SELECT name, source_file, key, on_column, n_rows, matched, "view", loaded_at
FROM smda.dataset_metadata
ORDER BY name;
