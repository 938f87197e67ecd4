"""The code location: every asset, check and resource of the SMDA warehouse (no heavy imports here)."""

import dagster as dg

from smda_assets.assets.curation import curation_experiment
from smda_assets.assets.pairs import pair_attribution_assets, pair_shifts, sft_pairs
from smda_assets.assets.probes import features_are_finite, policy_assets, probe_readout
from smda_assets.assets.views import views
from smda_assets.resources import SMDAResource

PROBE_ASSETS = [probe_readout, policy_assets, views]
PAIR_ASSETS = [sft_pairs, pair_shifts, pair_attribution_assets]

defs = dg.Definitions(
    assets=[*PROBE_ASSETS, *PAIR_ASSETS, curation_experiment],  # curation: on demand only (it retrains)
    asset_checks=[features_are_finite],
    resources={"smda": SMDAResource()},
)
