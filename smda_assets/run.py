"""One-shot runs without a daemon: `smda ingest` (only what is new or stale) and `smda materialize` (everything).

The order is the daemon's: observe the inputs; add a partition per new SFT file content; refit
the probe side once if it is stale; compute the stale or new batches (in parallel runs with the
multiprocess executor when asked); then the one writer loads them and the views are applied.
A batch that fails (a malformed file) fails alone: the others are loaded, and the error, which
names the file and line, is reported at the end.

Before anything runs, the config is checked (smda_core.preflight: every problem at once, no model
loaded), and the instance must serve this warehouse alone (smda_assets.instance). One ingest of a
warehouse runs at a time (a second waits, then finds the work done). Dagster's own log is
silent unless asked (`verbose`); failed asset checks and the policy's warnings come back in the
report, for the command line.
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
from smda_assets.instance import bind, instance_for
from smda_assets.partitions import sft_batches
from smda_assets.resources import SMDAResource
from smda_core.errors import SMDAError

BATCH_KEYS = ["sft_pairs", "pair_shifts", "pair_attribution", "pair_summary"]
WARNING = "warning: "  # how a batch run in its own process reports a failed check to the ingest that started it


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
    load_error: str | None = None                           # the loader's failure (a batch it refused), if any
    warnings: list[str] = field(default_factory=list)       # failed asset checks and the policy's warnings
    waiting: list[str] = field(default_factory=list)        # batches out of the pair views until recomputed


def default_instance(resource: SMDAResource | None = None) -> dg.DagsterInstance:
    """The instance that remembers what was computed for this resource's warehouse (smda_assets.instance)."""
    return instance_for((resource or SMDAResource()).warehouse)


def _logs(verbose: bool) -> dict:
    """Run config for Dagster's console log: silent unless asked (then DEBUG, every event). The product reports
    what matters itself, one line each: a failed step's own error, failed asset checks, the policy's warnings."""
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}}}


def failed_checks(result) -> list[str]:
    """One line per asset check that did not pass in a run's result."""
    return [f"check {e.check_name} of {e.asset_key.to_user_string()} failed" + (f": {e.description}" if e.description else "")
            for e in result.get_asset_check_evaluations() if not e.passed]


def step_error(events) -> str | None:
    """The first failed step's own error (Dagster wraps it; the cause names the file and line)."""
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            message = error.message.strip()
            kind = f"{error.cls_name}: " if error.cls_name else ""
            return message.split(kind, 1)[1] if kind and kind in message.split("\n", 1)[0] else message
    return None


def _run(resource: SMDAResource, instance: dg.DagsterInstance, keys: list[str], partition: str | None = None,
         raise_on_error: bool = True, *, verbose: bool = False, checks: list[str] | None = None) -> str | None:
    """Materialise `keys` in-process; returns the first step's error message when it failed (raises it as
    an SMDAError with `raise_on_error`). Failed asset checks are appended to `checks`."""
    assets = list(defs.assets)
    asset_checks = list(defs.asset_checks or [])
    result = dg.materialize([*assets, *asset_checks], selection=keys, resources={"smda": resource}, instance=instance,
                            partition_key=partition, raise_on_error=False, run_config=_logs(verbose))
    if checks is not None:
        checks.extend(failed_checks(result))
    if result.success:
        return None
    error = step_error(result.all_events) or f"materialisation of {keys} failed"
    if raise_on_error:
        raise SMDAError(error)
    return error


def observe_inputs(resource: SMDAResource, instance: dg.DagsterInstance, *, verbose: bool = False) -> None:
    """Record the inputs' current data versions (content hashes) as observations: Dagster's UI and automation
    conditions see what changed (`stale_report` needs none: it hashes the inputs itself)."""
    result = defs.resolve_job_def("observe_inputs").execute_in_process(
        run_config={**_run_config(resource), **_logs(verbose)}, instance=instance, raise_on_error=False)
    if not result.success:
        raise SMDAError(step_error(result.all_events) or "observing the inputs failed")


def _run_config(resource: SMDAResource) -> dict:
    return {"resources": {"smda": {"config": {"config_path": resource.config_path, "warehouse_path": resource.warehouse_path}}}}


def run_batch_job(batch: str, config_path: str | None, warehouse_path: str | None, with_loader: bool = False,
                  verbose: bool = False) -> tuple[str | None, list[str]]:
    """One batch as a run of the `sft_batch` job (multiprocess executor) on the persistent instance: its error
    (None when it succeeded) and its failed asset checks."""
    resource = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    keys = BATCH_KEYS + (["loaded_batches"] if with_loader else [])
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(batch_job_def), instance=instance, tags={"dagster/partition": batch},
                                run_config={**_run_config(resource), **_logs(verbose)},
                                asset_selection=[dg.AssetKey(k) for k in keys])
        checks = failed_checks(result)
        if result.success:
            return None, checks
        return step_error(result.all_events) or f"run for batch {batch} failed", checks


def run_batches(batches: list[str], resource: SMDAResource, instance: dg.DagsterInstance, workers: int = 1,
                separate_runs: bool | None = None, *, verbose: bool = False,
                checks: list[str] | None = None) -> dict[str, str]:
    """Compute batches, one run each: in this process one after another, or `workers` runs at once.

    Separate runs (the default when workers > 1) are processes of their own, each a run of the
    `sft_batch` job with the multiprocess executor on the persistent instance; they write only
    their batch's staging folder, so they never contend for DuckDB. Each gets its share of the
    CPU cores for torch. Returns batch → error for the batches that failed.
    """
    checks = checks if checks is not None else []
    if not (workers > 1 if separate_runs is None else separate_runs):
        failed = {}
        for batch in batches:
            error = _run(resource, instance, BATCH_KEYS, partition=batch, raise_on_error=False, verbose=verbose,
                         checks=checks)
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
        cmd += ["--verbose"] if verbose else []
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        checks.extend(line[len(WARNING):] for line in done.stdout.splitlines() if line.startswith(WARNING))
        if done.returncode == 0:
            return batch, None
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return batch, tail[0]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {b: e for b, e in pool.map(one, batches) if e}


def ingest(config_path: str | None = None, warehouse_path: str | None = None, instance: dg.DagsterInstance | None = None,
           *, workers: int = 1, everything: bool = False, progress=None, verbose: bool = False) -> IngestReport:
    """Bring the warehouse up to date with the inputs and the SFT files (everything=True: recompute all)."""
    from smda_core.preflight import check_config
    from smda_core.store.warehouse import locked

    resource = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    check_config(resource.config(), source=config_path or "config")  # every problem at once, before any run or model load
    with locked(resource.files / "ingest", exclusive=True):  # one ingest of a warehouse at a time
        instance = instance or default_instance(resource)
        bind(instance, resource.warehouse)
        return _ingest(resource, instance, workers=workers, everything=everything, say=progress or (lambda msg: None),
                       verbose=verbose)


def _ingest(resource: SMDAResource, instance: dg.DagsterInstance, *, workers: int, everything: bool, say,
            verbose: bool) -> IngestReport:
    from smda_assets.staleness import stale_report
    from smda_core.inputs.batches import config_scan
    from smda_core.store.state import warehouse_state

    report = IngestReport()
    checks: list[str] = []
    say("observing inputs (model, SAE, probes, settings)")
    observe_inputs(resource, instance, verbose=verbose)
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
        _run(resource, instance, PROBE_KEYS, verbose=verbose, checks=checks)
        status = stale_report(defs, instance, report.batches, smda=resource)
    report.ran = [b for b in report.batches if everything or any(status.needs_work(k, b) for k in BATCH_KEYS)]
    execution = resource.config().execution
    if report.ran and execution.engine == "ray":  # Ray spreads each batch's pairs; one local Ray serves every batch
        workers = workers if execution.address else 1
        say(f"pair steps as Ray tasks of {execution.shard_size} pairs on {execution.address or 'a local Ray'}")
    if report.ran:
        say(f"{len(report.ran)} batch(es): {', '.join(report.ran)}" + (f" ({workers} at a time)" if workers > 1 else ""))
    report.failed = run_batches(report.ran, resource, instance, workers, verbose=verbose, checks=checks)
    say("loading batches, applying views, drawing plots, writing the report")
    report.load_error = _run(resource, instance, ["loaded_batches", "dataset_metadata", "views", "plots", "report"],
                             raise_on_error=False, verbose=verbose, checks=checks)
    report.retired = retirable(instance.get_dynamic_partitions(sft_batches.name), resource.warehouse, report.batches)
    for batch in report.retired:  # superseded just now by the loader: nothing should recompute them
        instance.delete_dynamic_partition(sft_batches.name, batch)
    report.warnings = _warnings(resource, checks)
    report.waiting = warehouse_state(resource.warehouse, resource.stage, report.batches).waiting()
    return report


def _warnings(resource: SMDAResource, checks: list[str]) -> list[str]:
    """The failed checks of this ingest's runs, then the standing warnings of the warehouse's policy (once each)."""
    from smda_core.store.query import query

    stored = []
    if resource.warehouse.exists():
        for text in query(resource.warehouse, "SELECT warnings FROM smda.policy_fit")["warnings"].to_pylist():
            stored += (text or "").splitlines()
    return list(dict.fromkeys([*checks, *(w for w in stored if not any(c.endswith(w) for c in checks))]))


def materialize_all(config_path: str | None = None, warehouse_path: str | None = None,
                    instance: dg.DagsterInstance | None = None, workers: int = 1) -> list[str]:
    """Build every table and view; returns the SFT batch keys. Raises after loading the good batches if one failed."""
    report = ingest(config_path, warehouse_path, instance, workers=workers, everything=True)
    errors = [f"batch {b}: {e}" for b, e in report.failed.items()] + ([report.load_error] if report.load_error else [])
    if errors:
        raise SMDAError("; ".join(errors))
    return report.batches


if __name__ == "__main__":  # one batch as its own run: `python -m smda_assets.run BATCH [--config C] [--warehouse W]`
    import argparse

    parser = argparse.ArgumentParser(description="Materialise one SFT batch with the multiprocess executor")
    parser.add_argument("batch")
    parser.add_argument("--config")
    parser.add_argument("--warehouse")
    parser.add_argument("--with-loader", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    error, checks = run_batch_job(args.batch, args.config, args.warehouse, args.with_loader, args.verbose)
    for line in checks:
        print(WARNING + line)
    if error:
        print(error, file=sys.stderr)
        sys.exit(1)
