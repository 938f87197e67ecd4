"""Shared fixtures: the demo world is built once per test session (cached by recipe hash)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = os.environ.get("SMDA_TEST_CACHE", str(ROOT / ".cache" / "smda-demo"))


def demo_config(**demo):
    from smda_core.config import load_config

    return load_config(None, demo={"cache_dir": CACHE, **demo})


@pytest.fixture(scope="session")
def runtime():
    """The default-recipe demo world's model runtime (model, tokenizer, SAE, tokenised probes)."""
    from smda_core.api import load_runtime

    return load_runtime(demo_config(), progress=False)


@pytest.fixture(scope="session")
def probe_scores(runtime):
    from smda_core.api import measure_probes

    return measure_probes(runtime, progress=False)


@pytest.fixture(scope="session")
def policy(runtime, probe_scores):
    from smda_core.api import fit_policy

    return fit_policy(probe_scores, runtime.config.policy)
