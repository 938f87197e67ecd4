"""Versions of the pipeline's inputs and results, as content hashes: what tells what is stale.

Each input (model weights, SAE weights, probe file, and the settings each step reads) gets a
short hash of its content. Each result (probe readout, policy, and per SFT batch its pairs,
shifts and attribution) gets a hash of the versions it was computed from, which the Dagster
assets report as data versions. A result whose recorded version differs from the one the current
inputs give is stale (DESIGN §7: refresh on change); `smda_assets.staleness` makes that comparison.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


# What each materialised asset is computed from. An asset's data version is a hash of the versions
# of what it was computed from: the inputs it read (their content hashes) and the stored results of
# upstream assets it loaded (their data versions). `asset_version` gives that hash; with no upstream
# lookup it chains through the versions the upstream assets would have now, which is the version a
# result computed from the current inputs has: the *expected* version. A result whose recorded
# version differs from the expected one was computed from something else: it is stale.

READOUT_ASSETS = ("probes", "features", "behaviour_scores")
"""One forward pass over the probes: computed from the model, SAE, probe file and readout settings."""
POLICY_ASSETS = ("policy", "policy_fit", "feature_labels")
"""One fit on the stored readout, with the policy settings."""
BATCH_ASSETS = ("sft_pairs", "pair_shifts", "pair_attribution", "pair_summary")
"""Per SFT batch (partition)."""
VERSIONED_ASSETS = READOUT_ASSETS + POLICY_ASSETS + BATCH_ASSETS
"""The assets whose data version says what they were computed from (the others have none of their own)."""

READOUT_INPUTS = ("model_files", "sae_files", "probe_file", "readout_settings")


@dataclass(frozen=True)
class Version:
    """A data version and the versions it was combined from (input or asset name → version, in order)."""

    value: str
    parts: dict[str, str]


Upstream = Callable[[str, "str | None"], "str | None"]
"""(asset, partition) → the data version of the stored result that was loaded, or None if unknown."""


def batch_version(batch_id: str) -> str:
    """The content of one SFT batch. Batch ids are content-addressed (file stem + 8 hex of the
    content's SHA-256, :func:`smda_core.inputs.records.file_batch_id`), so the partition key names its
    content, and the version needs no file: a superseded batch whose file is gone keeps it."""
    return combine("batch", batch_id)


def asset_version(asset: str, inputs: dict[str, str], batch: str | None = None, upstream: Upstream | None = None) -> Version:
    """The data version of `asset` (one of :data:`VERSIONED_ASSETS`; `batch` for the batch assets).

    Args:
        inputs: :func:`input_versions` of the config the asset reads.
        upstream: the data versions of the upstream results the asset loaded (recorded when they
            were materialised). None, or None for one of them: the version that upstream asset
            would have from `inputs` (its expected version).

    - probes, features, behaviour_scores: the readout inputs (:func:`readout_version`).
    - policy, policy_fit, feature_labels: the readout they were fitted on and the policy settings
      (:func:`policy_version` when that readout is the current one).
    - sft_pairs: the batch content and the probe file (checked for overlap).
    - pair_shifts: the policy, the shift settings and the batch content.
    - pair_attribution, pair_summary: the shifts of the batch and the policy they attribute with.
    """
    def up(name: str, partition: str | None = None) -> str:
        found = upstream(name, partition) if upstream is not None else None
        return found if found is not None else asset_version(name, inputs, partition).value

    if asset in READOUT_ASSETS:
        parts = {k: inputs[k] for k in READOUT_INPUTS}
    elif asset in POLICY_ASSETS:
        parts = {"features": up("features"), "policy_settings": inputs["policy_settings"]}
    elif asset in BATCH_ASSETS and batch is None:
        raise ValueError(f"{asset} is computed per SFT batch: name the batch")
    elif asset == "sft_pairs":
        parts = {"batch": batch_version(batch), "probe_file": inputs["probe_file"]}
    elif asset == "pair_shifts":
        parts = {"policy": up("policy"), "shift_settings": inputs["shift_settings"], "batch": batch_version(batch)}
    elif asset in ("pair_attribution", "pair_summary"):
        parts = {"pair_shifts": up("pair_shifts", batch), "policy": up("policy")}
    else:
        raise ValueError(f"{asset} has no data version of its own; versioned assets: {', '.join(VERSIONED_ASSETS)}")
    return Version(combine(*parts.values()), parts)


def expected_versions(inputs: dict[str, str], batches: Iterable[str] = ()) -> dict[tuple[str, str | None], Version]:
    """The version every versioned asset (per batch for the batch assets) has when computed from `inputs`.

    Keys are (asset, batch id) for the batch assets, (asset, None) for the others.
    """
    out: dict[tuple[str, str | None], Version] = {}
    for asset in READOUT_ASSETS + POLICY_ASSETS:
        out[(asset, None)] = asset_version(asset, inputs)
    for batch in batches:
        for asset in BATCH_ASSETS:
            out[(asset, batch)] = asset_version(asset, inputs, batch)
    return out
