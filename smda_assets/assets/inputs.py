"""The pipeline's inputs as observable source assets: model, SAE, probe file and the settings each step reads.

Their data versions are content hashes (smda_core.store.versions). Observing them after a change
lets Dagster's UI and the daemon's automation see it. `smda stale` and `smda ingest` need no
observation: they compare each result's recorded data version with the hashes of the inputs now.
"""

import warnings

import dagster as dg

from smda_assets.resources import SMDAResource

DESCRIPTIONS = {
    "model_files": "The causal LM's weights and tokenizer (folder hash) and the model settings",
    "sae_files": "The sparse autoencoder's weights and config (folder hash, or release/id)",
    "probe_file": "The probe prompts file (content hash)",
    "readout_settings": "Settings of the probe readout: feature position, behaviour definition, refusal openings",
    "policy_settings": "Settings of the symbolic policy: selection, design, λ",
    "shift_settings": "Settings of the pair shifts and attribution: optimiser, lr, steps, methods",
}


def _input_asset(name: str) -> dg.SourceAsset:
    def _observe(smda: SMDAResource) -> dg.DataVersion:
        from smda_core.store.versions import input_versions

        return dg.DataVersion(input_versions(smda.config())[name])

    with warnings.catch_warnings():  # observable source assets are 'beta' in Dagster 1.13
        warnings.filterwarnings("ignore", message=".*observable_source_asset.*")
        return dg.observable_source_asset(name=name, group_name="inputs", description=DESCRIPTIONS[name])(_observe)


INPUT_ASSETS = [_input_asset(name) for name in DESCRIPTIONS]
