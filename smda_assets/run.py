"""Materialise the whole graph in-process: probe side, then each SFT batch as its partition, then the views."""

from __future__ import annotations

import os

import dagster as dg

from smda_assets.definitions import defs
from smda_assets.partitions import sft_batches
from smda_assets.resources import SMDAResource

PROBE_KEYS = ["probes", "features", "behaviour_scores", "policy", "policy_fit", "feature_labels"]
PAIR_KEYS = ["sft_pairs", "pair_shifts", "pair_attribution", "pair_summary"]


def default_instance() -> dg.DagsterInstance:
    """The project's instance when DAGSTER_HOME is set (the Makefile sets it), else a throw-away one."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def _run(resource: SMDAResource, instance: dg.DagsterInstance, keys: list[str], partition: str | None = None) -> None:
    assets = list(defs.assets)
    checks = list(defs.asset_checks or [])
    result = dg.materialize([*assets, *checks], selection=keys, resources={"smda": resource}, instance=instance,
                            partition_key=partition, raise_on_error=True)
    if not result.success:
        raise RuntimeError(f"materialisation of {keys} failed")


def materialize_all(config_path: str | None = None, warehouse_path: str | None = None,
                    instance: dg.DagsterInstance | None = None) -> list[str]:
    """Build every table and view; returns the SFT batch keys that were materialised."""
    from smda_assets.assets.pairs import batch_files

    resource = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    instance = instance or default_instance()
    _run(resource, instance, PROBE_KEYS)
    batches = sorted(batch_files(resource.config()))
    new = [b for b in batches if not instance.has_dynamic_partition(sft_batches.name, b)]
    if new:
        instance.add_dynamic_partitions(sft_batches.name, new)
    for batch in batches:
        _run(resource, instance, PAIR_KEYS, partition=batch)
    _run(resource, instance, ["views"])
    return batches
