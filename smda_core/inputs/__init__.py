"""Reading and checking the user's files: probes, SFT pairs, dataset metadata, feature labels, batches.

The readers every caller uses are re-exported here (``inputs.read_probes(path)``); each lives in
the module named after what it reads.
"""

from smda_core.inputs.feature_labels import read_feature_labels
from smda_core.inputs.metadata import read_metadata_table
from smda_core.inputs.pairs import PAIR_KINDS, check_overlap, check_pair_ids_unique, pair_rows, probe_overlap, read_sft_pairs
from smda_core.inputs.probes import read_probes
from smda_core.inputs.records import content_hash, write_jsonl

__all__ = ["PAIR_KINDS", "check_overlap", "check_pair_ids_unique", "content_hash", "pair_rows", "probe_overlap", "read_feature_labels", "read_metadata_table",
           "read_probes", "read_sft_pairs", "write_jsonl"]
