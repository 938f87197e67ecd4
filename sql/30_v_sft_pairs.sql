-- One row per SFT pair with every metadata field it arrived with (columns added on demand, plus metadata_json).
CREATE OR REPLACE VIEW smda.v_sft_pairs AS
SELECT * FROM smda.sft_pairs;
