"""Versions of the pipeline's inputs, as content hashes: what Dagster compares to tell what is stale.

Each input (model weights, SAE weights, probe file, and the settings each step reads) gets a
short hash of its content. The Dagster assets report these as data versions: the inputs as
observations, the probe readout and the policy as hashes of what they were computed from. When
any hash changes, Dagster marks what depends on it stale (DESIGN §7: refresh on change).
"""

from __future__ import annotations

import json
from pathlib import Path

from smda_core.config import SMDAConfig
from smda_core.hashing import combine, path_hash
from smda_core.sources import resolve_sources

INPUTS = ("model_files", "sae_files", "probe_file", "readout_settings", "policy_settings", "shift_settings")
"""The observable inputs, in the order the assets list them."""


def _settings(config: SMDAConfig, *sections: str) -> str:
    return combine(json.dumps({s: getattr(config, s).model_dump() for s in sections}, sort_keys=True, default=str))


def input_versions(config: SMDAConfig) -> dict[str, str]:
    """The version of every input of :data:`INPUTS` (builds the demo world first if it is not cached)."""
    src = resolve_sources(config, progress=False)
    model = src.model
    model_v = path_hash(model) if Path(model).exists() else combine("hub", model)
    sae_path = src.sae.get("path")
    sae_v = path_hash(sae_path) if sae_path else combine("release", str(src.sae.get("release")), str(src.sae.get("sae_id")))
    return {
        "model_files": combine(model_v, _settings(config, "model")),
        "sae_files": sae_v,
        "probe_file": path_hash(src.probes),
        "readout_settings": combine(_settings(config, "features", "behaviour"), json.dumps(src.refusal_openings)),
        "policy_settings": _settings(config, "policy"),
        "shift_settings": _settings(config, "shifts", "attribution"),
    }


def readout_version(versions: dict[str, str]) -> str:
    """Data version of the probe readout (probes, features, behaviour): what it was computed from."""
    return combine(*(versions[k] for k in ("model_files", "sae_files", "probe_file", "readout_settings")))


def policy_version(versions: dict[str, str]) -> str:
    """Data version of the policy: the readout it was fitted on and the policy settings."""
    return combine(readout_version(versions), versions["policy_settings"])
