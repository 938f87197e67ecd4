"""The code location: every asset, check, job, sensor, schedule and resource of the SMDA warehouse (no heavy imports here)."""

import dagster as dg

from smda_assets.assets.curation import curation_experiment
from smda_assets.assets.inputs import INPUT_ASSETS
from smda_assets.assets.pairs import loaded_batches, pair_attribution_assets, pair_shifts, sft_pairs
from smda_assets.assets.probes import features_are_finite, policy_assets, probe_readout
from smda_assets.assets.views import dataset_metadata, plots, views
from smda_assets.automation import batch_job, observe_job, refresh_job, refresh_schedule, sft_folder_sensor
from smda_assets.resources import SMDAResource

PROBE_ASSETS = [probe_readout, policy_assets, views, dataset_metadata, plots]
PAIR_ASSETS = [sft_pairs, pair_shifts, pair_attribution_assets, loaded_batches]

defs = dg.Definitions(
    assets=[*INPUT_ASSETS, *PROBE_ASSETS, *PAIR_ASSETS, curation_experiment],  # curation: on demand only (it retrains)
    asset_checks=[features_are_finite],
    jobs=[batch_job, observe_job, refresh_job],
    sensors=[sft_folder_sensor],
    schedules=[refresh_schedule],
    resources={"smda": SMDAResource()},
)


def batch_job_def() -> dg.JobDefinition:
    """The SFT batch job, reconstructable in step subprocesses (multiprocess executor)."""
    return defs.resolve_job_def("sft_batch")
