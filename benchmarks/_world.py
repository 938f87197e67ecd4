"""Shared setup of the benchmarks: the cached demo world (built on first use)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_world():
    from smda_core.api import load_runtime
    from smda_core.config import load_config

    return load_runtime(load_config(None, demo={"cache_dir": str(ROOT / ".cache" / "smda-demo")}), progress=False)


def padded_batches(seqs: list[list[int]], pad: int, batch_size: int):
    """Right-padded (input_ids, attention_mask) batches of similar-length sequences, as the product batches them."""
    from smda_core.model.training import pad_sequences

    seqs = sorted(seqs, key=len)
    return [pad_sequences(seqs[s: s + batch_size], pad)[:2] for s in range(0, len(seqs), batch_size)]
