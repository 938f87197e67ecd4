"""The code location: every asset, check, job, sensor, schedule and resource of the SMDA warehouse (no heavy imports here).

Dagster loads `defs` from this module (`[tool.dg]` in pyproject.toml). It is built from the
config `$SMDA_CONFIG` names (the embedded demo's without it): the sensor's interval, the schedule's
cron and their default states come from its `watch` section. :func:`build_defs` builds the same
for any config.
"""

import os

import dagster as dg

from smda_assets.assets.curation import curation_experiment
from smda_assets.assets.inputs import INPUT_ASSETS
from smda_assets.assets.pairs import loaded_batches, pair_attribution_assets, pair_shifts, sft_pairs
from smda_assets.assets.probes import features_are_finite, policy_assets, probe_readout
from smda_assets.assets.report import report
from smda_assets.assets.views import dataset_metadata, plots, views
from smda_assets.automation import batch_job, build_automation, observe_job, refresh_job
from smda_assets.resources import SMDAResource

PROBE_ASSETS = [probe_readout, policy_assets, views, dataset_metadata, plots, report]
PAIR_ASSETS = [sft_pairs, pair_shifts, pair_attribution_assets, loaded_batches]


def build_defs(config_path: str | None = None) -> dg.Definitions:
    """Every definition, the sensor and schedule set by the config at `config_path` (default: `$SMDA_CONFIG`, else the demo's).

    The resource reads the same config when given one; without, it reads `$SMDA_CONFIG` when a run starts.
    """
    from smda_core.config import load_config

    automation = build_automation(load_config(config_path or os.environ.get("SMDA_CONFIG") or None).watch)
    return dg.Definitions(
        assets=[*INPUT_ASSETS, *PROBE_ASSETS, *PAIR_ASSETS, curation_experiment],  # curation: on demand only (it retrains)
        asset_checks=[features_are_finite],
        jobs=[batch_job, observe_job, refresh_job],
        sensors=[automation.sensor],
        schedules=[automation.schedule],
        resources={"smda": SMDAResource(config_path=config_path)},
    )


defs = build_defs()


def batch_job_def() -> dg.JobDefinition:
    """The SFT batch job, reconstructable in step subprocesses (multiprocess executor)."""
    return defs.resolve_job_def("sft_batch")
