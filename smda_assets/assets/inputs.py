"""The pipeline's inputs as observable source assets: model, SAE, probe file and the settings each step reads.

Their data versions are content hashes (smda_core.versions). Observing them after a change
makes Dagster mark everything computed from the old content stale; `smda ingest` and the
daemon's automation then recompute it.
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
