"""One-shot runs without a daemon: `smda ingest` (only what is new or stale) and `smda materialize` (everything).

The order is the daemon's: observe the inputs; add a partition per new SFT file content; refit
the probe side once if it is stale; compute the stale or new batches (in parallel runs with the
multiprocess executor when asked); then the one writer loads them and the views are applied.
A batch that fails (a malformed file) fails alone: the others are loaded, and the error, which
names the file and line, is reported at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg

from smda_assets.automation import PROBE_KEYS, retirable
from smda_assets.definitions import batch_job_def, defs
from smda_assets.partitions import sft_batches
from smda_assets.resources import SMDAResource
from smda_core.errors import SMDAError

BATCH_KEYS = ["sft_pairs", "pair_shifts", "pair_attribution", "pair_summary"]


@dataclass
class IngestReport:
    """What one ingest did: partitions added, duplicates skipped, what ran, what failed."""

    batches: list[str] = field(default_factory=list)        # every batch of the current files
    added: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)  # file → batch that already holds its content
    probe_side: bool = False
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)    # batch → error message
    retired: list[str] = field(default_factory=list)        # superseded partitions deleted from the instance
    loaded: str = ""


def default_instance(resource: SMDAResource | None = None) -> dg.DagsterInstance:
    """The instance that remembers what was computed: `$DAGSTER_HOME`'s (the Makefile sets it to the
    project), else the warehouse's own (`<warehouse stem>.files/.dagster`), so that `smda ingest`
    is incremental wherever it runs. One instance should serve one warehouse."""
    if not os.environ.get("DAGSTER_HOME"):
        home = (resource or SMDAResource()).files / ".dagster"
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home.resolve())
    return dg.DagsterInstance.get()


def step_error(events) -> str | None:
    """The first failed step's own error (Dagster wraps it; the cause names the file and line)."""
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return error.message.strip()
    return None


def _run(resource: SMDAResource, instance: dg.DagsterInstance, keys: list[str], partition: str | None = None,
         raise_on_error: bool = True) -> str | None:
    """Materialise `keys` in-process; returns the first step's error message when it failed."""
    assets = list(defs.assets)
    checks = list(defs.asset_checks or [])
    result = dg.materialize([*assets, *checks], selection=keys, resources={"smda": resource}, instance=instance,
                            partition_key=partition, raise_on_error=raise_on_error)
    if result.success:
        return None
    return step_error(result.all_events) or f"materialisation of {keys} failed"


def observe_inputs(resource: SMDAResource, instance: dg.DagsterInstance) -> None:
    """Record the inputs' current data versions (content hashes) as observations: Dagster's UI and automation
    conditions see what changed (`stale_report` needs none: it hashes the inputs itself)."""
    defs.resolve_job_def("observe_inputs").execute_in_process(run_config=_run_config(resource), instance=instance)


def _run_config(resource: SMDAResource) -> dict:
    return {"resources": {"smda": {"config": {"config_path": resource.config_path, "warehouse_path": resource.warehouse_path}}}}


def run_batch_job(batch: str, config_path: str | None, warehouse_path: str | None, with_loader: bool = False) -> str | None:
    """One batch as a run of the `sft_batch` job (multiprocess executor) on the persistent instance."""
    resource = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    keys = BATCH_KEYS + (["loaded_batches"] if with_loader else [])
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(batch_job_def), instance=instance, tags={"dagster/partition": batch},
                                run_config=_run_config(resource), asset_selection=[dg.AssetKey(k) for k in keys])
        if result.success:
            return None
        return step_error(result.all_events) or f"run for batch {batch} failed"


def run_batches(batches: list[str], resource: SMDAResource, instance: dg.DagsterInstance, workers: int = 1,
                separate_runs: bool | None = None) -> dict[str, str]:
    """Compute batches, one run each: in this process one after another, or `workers` runs at once.

    Separate runs (the default when workers > 1) are processes of their own, each a run of the
    `sft_batch` job with the multiprocess executor on the persistent instance; they write only
    their batch's staging folder, so they never contend for DuckDB. Each gets its share of the
    CPU cores for torch. Returns batch → error for the batches that failed.
    """
    if not (workers > 1 if separate_runs is None else separate_runs):
        failed = {}
        for batch in batches:
            error = _run(resource, instance, BATCH_KEYS, partition=batch, raise_on_error=False)
            if error:
                failed[batch] = error
        return failed
    if instance.is_ephemeral:
        raise SMDAError("parallel batches need a persistent Dagster instance: set DAGSTER_HOME (the Makefile does)")
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {**os.environ, "DAGSTER_HOME": str(instance.root_directory), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def one(batch: str) -> tuple[str, str | None]:
        cmd = [sys.executable, "-m", "smda_assets.run", batch]
        cmd += ["--config", resource.config_path] if resource.config_path else []
        cmd += ["--warehouse", resource.warehouse_path] if resource.warehouse_path else []
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return batch, None
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
        return batch, tail[0]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {b: e for b, e in pool.map(one, batches) if e}


def ingest(config_path: str | None = None, warehouse_path: str | None = None, instance: dg.DagsterInstance | None = None,
           *, workers: int = 1, everything: bool = False, progress=None) -> IngestReport:
    """Bring the warehouse up to date with the inputs and the SFT files (everything=True: recompute all)."""
    from smda_assets.staleness import stale_report
    from smda_core.inputs.batches import config_scan

    say = progress or (lambda msg: None)
    resource = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    instance = instance or default_instance(resource)
    report = IngestReport()
    say("observing inputs (model, SAE, probes, settings)")
    observe_inputs(resource, instance)
    existing = instance.get_dynamic_partitions(sft_batches.name)
    scan = config_scan(resource.config(), known=existing)
    report.batches = sorted(scan.batches)
    report.duplicates = {str(k): v for k, v in scan.duplicates.items()}
    report.added = [b for b in report.batches if b not in existing]
    if report.added:
        instance.add_dynamic_partitions(sft_batches.name, report.added)
    status = stale_report(defs, instance, report.batches, smda=resource)
    report.probe_side = everything or any(status.needs_work(k) for k in PROBE_KEYS)
    if report.probe_side:
        say("probe readout and policy")
        _run(resource, instance, PROBE_KEYS)
        status = stale_report(defs, instance, report.batches, smda=resource)
    report.ran = [b for b in report.batches if everything or any(status.needs_work(k, b) for k in BATCH_KEYS)]
    if report.ran:
        say(f"{len(report.ran)} batch(es): {', '.join(report.ran)}" + (f" ({workers} at a time)" if workers > 1 else ""))
    report.failed = run_batches(report.ran, resource, instance, workers)
    say("loading batches, applying views, drawing plots")
    _run(resource, instance, ["loaded_batches", "dataset_metadata", "views", "plots"])
    report.retired = retirable(instance.get_dynamic_partitions(sft_batches.name), resource.warehouse, report.batches)
    for batch in report.retired:  # superseded just now by the loader: nothing should recompute them
        instance.delete_dynamic_partition(sft_batches.name, batch)
    return report


def materialize_all(config_path: str | None = None, warehouse_path: str | None = None,
                    instance: dg.DagsterInstance | None = None, workers: int = 1) -> list[str]:
    """Build every table and view; returns the SFT batch keys. Raises after loading the good batches if one failed."""
    report = ingest(config_path, warehouse_path, instance, workers=workers, everything=True)
    if report.failed:
        raise SMDAError("; ".join(f"batch {b}: {e}" for b, e in report.failed.items()))
    return report.batches


if __name__ == "__main__":  # one batch as its own run: `python -m smda_assets.run BATCH [--config C] [--warehouse W]`
    import argparse

    parser = argparse.ArgumentParser(description="Materialise one SFT batch with the multiprocess executor")
    parser.add_argument("batch")
    parser.add_argument("--config")
    parser.add_argument("--warehouse")
    parser.add_argument("--with-loader", action="store_true")
    args = parser.parse_args()
    error = run_batch_job(args.batch, args.config, args.warehouse, args.with_loader)
    if error:
        print(error, file=sys.stderr)
        sys.exit(1)
