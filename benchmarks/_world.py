"""Shared setup of the benchmarks: the cached demo world (built on first use)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_world():
    from smda_core.api import load_world
    from smda_core.config import load_config

    return load_world(load_config(None, demo={"cache_dir": str(ROOT / ".cache" / "smda-demo")}), progress=False)
