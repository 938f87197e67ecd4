"""Data versions on Dagster's materialisations: what an asset reports, and what the instance recorded.

Each versioned asset (smda_core.store.versions.VERSIONED_ASSETS) reports as its data version a
hash of what it was computed from: the content hashes of the inputs it read, and the recorded
data versions of the upstream results it loaded. The parts go along as tags (`smda/<part>`), so
a stale result can say what changed. Everything here is Dagster's public API: materialisation
records from `DagsterInstance.fetch_materializations`, and their tags, where Dagster keeps the
data version under `dagster/data_version`.
"""

from __future__ import annotations

import dagster as dg

from smda_assets.resources import SMDAResource

DATA_VERSION_TAG = "dagster/data_version"
"""The materialisation tag that holds its data version (user-provided or Dagster's own)."""
PART_TAG_PREFIX = "smda/"
"""Tags `smda/<part>`: the version of each thing a result was computed from."""


def latest_materialization(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dg.EventLogRecord | None:
    """The newest materialisation of an asset (of one partition when given; of any when not)."""
    key = dg.AssetKey(asset)
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]) if partition is not None else key, limit=1)
    return found.records[0] if found.records else None


def _tags(record: dg.EventLogRecord | None) -> dict[str, str]:
    materialization = record.event_log_entry.asset_materialization if record is not None else None
    return dict(materialization.tags or {}) if materialization is not None else {}


def recorded_version(record: dg.EventLogRecord | None) -> str | None:
    """The data version a materialisation recorded (None for none)."""
    return _tags(record).get(DATA_VERSION_TAG)


def recorded_parts(record: dg.EventLogRecord | None) -> dict[str, str]:
    """What a materialisation was computed from, as it recorded it (part → version; empty if it did not)."""
    return {k[len(PART_TAG_PREFIX):]: v for k, v in _tags(record).items() if k.startswith(PART_TAG_PREFIX)}


def computed_from(context: dg.AssetExecutionContext, smda: SMDAResource, asset: str) -> dict:
    """`data_version` and `tags` for an asset's MaterializeResult: the versions of what it was computed from.

    The inputs' versions come from the config the run reads; the upstream results' from their
    latest materialisations on the run's instance (the results the asset just loaded). An upstream
    result with no recorded materialisation counts as computed from the current inputs.
    """
    from smda_core.store.versions import asset_version, input_versions

    def upstream(name: str, partition: str | None) -> str | None:
        return recorded_version(latest_materialization(context.instance, name, partition))

    batch = context.partition_key if context.has_partition_key else None
    version = asset_version(asset, input_versions(smda.config()), batch, upstream)
    return {"data_version": dg.DataVersion(version.value),
            "tags": {PART_TAG_PREFIX + part: value for part, value in version.parts.items()}}
