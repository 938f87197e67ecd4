-- One row per SFT pair with every metadata field it arrived with (columns added on demand, plus metadata_json).
CREATE OR REPLACE VIEW smda.v_sft_pairs AS
SELECT * FROM smda.sft_pairs AS p
WHERE NOT EXISTS (SELECT 1 FROM smda.sft_batches AS sb WHERE sb.batch_id = p.batch_id AND sb.status = 'superseded');
