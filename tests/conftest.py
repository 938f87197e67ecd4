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
def world():
    """The default-recipe demo world, loaded (model, tokenizer, SAE, probes)."""
    from smda_core.api import load_world

    return load_world(demo_config(), progress=False)


@pytest.fixture(scope="session")
def probe_scores(world):
    from smda_core.api import measure_probes

    return measure_probes(world, progress=False)


@pytest.fixture(scope="session")
def policy(world, probe_scores):
    from smda_core.api import fit_policy

    return fit_policy(world, probe_scores)
