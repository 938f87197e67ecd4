"""New SFT files → new partitions (a sensor); everything again on a cron (a schedule); the jobs they launch.

The sensor and schedule are built from the config's `watch` section by :func:`build_automation`
(smda_assets.definitions calls it with the config the code location is built from); nothing here
reads the environment. The sensor looks at the watched folder (config `watch.folder`; the demo's
SFT folder by default).
Each file content not yet a batch becomes a new dynamic partition and one run for that partition
alone: its pairs, shifts and attribution, then the one writer that loads it. Content already held
by a batch (the same file dropped twice, under any name) adds nothing; a changed file is a new
batch, and the loader marks the old one superseded. Stale partitions (new model, SAE, probes or
settings) are recomputed by the assets' eager automation conditions after the policy is refitted
once; the schedule observes the inputs and re-runs the probe side, from which all of that follows.
"""

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import dagster as dg

from smda_assets.partitions import sft_batches
from smda_assets.resources import SMDAResource
from smda_core.config import WatchSection

BATCH_ASSETS = ["sft_pairs", "pair_shifts", "pair_attribution", "pair_summary", "loaded_batches"]
INPUT_KEYS = ["model_files", "sae_files", "probe_file", "readout_settings", "policy_settings", "shift_settings"]
PROBE_KEYS = ["probes", "features", "behaviour_scores", "policy", "policy_fit", "feature_labels"]

# Heavy modules are imported once in the forkserver, not once per step.
PRELOAD = ["torch", "transformers", "sae_lens", "smda_core.api", "smda_core.model.shifts"]
batch_executor = dg.multiprocess_executor.configured(
    {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": PRELOAD}}})

batch_job = dg.define_asset_job(
    "sft_batch", selection=dg.AssetSelection.assets(*BATCH_ASSETS), partitions_def=sft_batches,
    executor_def=batch_executor,
    description="One SFT batch: pairs, shifts, attribution (parallel-safe: staged files), then the one writer")
observe_job = dg.define_asset_job(
    "observe_inputs", selection=dg.AssetSelection.assets(*INPUT_KEYS),
    description="Record the inputs' content hashes (data versions): what changed makes its dependents stale")
refresh_job = dg.define_asset_job(
    "refresh", selection=dg.AssetSelection.assets(*INPUT_KEYS, *PROBE_KEYS, "loaded_batches", "dataset_metadata", "views",
                                        "plots", "report"),
    description="Observe the inputs, re-read the probes, refit the policy, reload batches, re-apply the views, redraw, rewrite the report")


def new_batch_requests(smda: SMDAResource, instance: dg.DagsterInstance) -> tuple[list[str], list[str], dict]:
    """Batch ids of file contents not yet partitions, partitions to retire, and what the scan saw.

    A partition is retired (deleted from the dynamic partitions) once the loader has marked its
    batch superseded and no file holds its content: nothing would recompute it under the eager
    conditions any more, and its rows stay in the warehouse on record. If the old content comes
    back, its id is new again and it is re-added like any new file.
    """
    from smda_core.inputs.batches import config_scan

    existing = instance.get_dynamic_partitions(sft_batches.name)
    found = config_scan(smda.config(), known=existing)
    new = [b for b in found.batches if b not in existing]
    retired = retirable(existing, smda.warehouse, found.batches)
    seen = {"batches": sorted(found.batches), "duplicates": {str(k): v for k, v in found.duplicates.items()}}
    return new, retired, seen


def retirable(registered: Iterable[str], warehouse: Path, current: Iterable[str]) -> list[str]:
    """Registered partitions whose batch is superseded and whose content no current file holds."""
    return sorted((set(registered) & superseded_batches(warehouse)) - set(current))


def superseded_batches(warehouse: Path) -> set[str]:
    """Batch ids the loader marked superseded (none before the warehouse has its batch registry)."""
    from smda_core.store.warehouse import session

    if not warehouse.exists():
        return set()
    with session(warehouse, read_only=True) as con:
        if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'smda' "
                           "AND table_name = 'sft_batches'").fetchall()[0][0]:
            return set()
        return {r[0] for r in con.execute("SELECT batch_id FROM smda.sft_batches WHERE status = 'superseded'").fetchall()}


def sft_folder_tick(context: dg.SensorEvaluationContext, smda: SMDAResource) -> dg.SensorResult:
    """One look at the watched folder: a partition and a run for each new file content; retire superseded ones."""
    import json

    new, retired, seen = new_batch_requests(smda, context.instance)
    for path, batch in seen["duplicates"].items():
        context.log.info(f"{path}: same content as batch {batch}; not added again")
    if retired:
        context.log.info(f"retiring superseded partitions: {', '.join(retired)}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=b, partition_key=b, asset_selection=[dg.AssetKey(k) for k in BATCH_ASSETS])
                      for b in new],
        dynamic_partitions_requests=([sft_batches.build_add_request(new)] if new else [])
        + ([sft_batches.build_delete_request(retired)] if retired else []),
        cursor=json.dumps(seen, sort_keys=True))


class Automation(NamedTuple):
    sensor: dg.SensorDefinition
    schedule: dg.ScheduleDefinition


def build_automation(watch: WatchSection) -> Automation:
    """The watched-folder sensor and the refresh schedule, with the interval, cron and default states of `watch`."""

    @dg.sensor(name="sft_folder_sensor", minimum_interval_seconds=watch.sensor_interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING if watch.sensor_running else dg.DefaultSensorStatus.STOPPED,
               asset_selection=dg.AssetSelection.assets(*BATCH_ASSETS),
               description="New SFT file contents in the watched folder → a new partition and a run for it alone")
    def sft_folder_sensor(context: dg.SensorEvaluationContext, smda: SMDAResource) -> dg.SensorResult:
        return sft_folder_tick(context, smda)

    refresh_schedule = dg.ScheduleDefinition(
        name="smda_refresh", job=refresh_job, cron_schedule=watch.cron,
        default_status=dg.DefaultScheduleStatus.RUNNING if watch.schedule_running else dg.DefaultScheduleStatus.STOPPED,
        description="Re-run everything: observe inputs, refit; stale batch partitions follow by their automation conditions")
    return Automation(sft_folder_sensor, refresh_schedule)
