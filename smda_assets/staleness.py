"""What is stale or missing: each result's recorded data version against the one the inputs give now.

Every versioned result (probe readout, policy, and per SFT batch its pairs, shifts and
attribution) records as its data version a hash of what it was computed from
(smda_assets.provenance). The config gives the version each would have if computed now
(smda_core.store.versions.expected_versions), straight from the inputs' content hashes: the
inputs need not have been observed. A result is

- 'missing' if it was never materialised (that partition, for the batch assets);
- 'stale' if its recorded version differs from the expected one (the causes name what changed),
  or if anything it depends on is stale or missing: users ask "is this result out of date?", so
  everything downstream of a stale result is stale too, not only the next step;
- 'fresh' otherwise.

Results with no content version of their own (the loader, views, metadata, plots, report, the curation
experiment) are 'missing' if never materialised and 'stale' if an upstream result is stale or
missing, or was materialised after them (they were built from an older one); else 'fresh'.

The instance only remembers; the warehouse is what users read. A result the instance recorded but
the warehouse does not hold (smda_core.store.state: the readout and policy versions it was written
with, each batch's pair rows or staged files against the current policy) is 'missing' too ("not in
the warehouse"), so `smda ingest` recomputes it. `waiting` names the batches whose loaded rows were
computed against another policy than the warehouse's: the pair views leave them out until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import TYPE_CHECKING

import dagster as dg

from smda_assets.partitions import sft_batches
from smda_assets.provenance import latest_materialization, recorded_parts, recorded_version
from smda_assets.resources import SMDAResource

if TYPE_CHECKING:
    from smda_core.store.versions import Version

Key = tuple[str, str | None]  # (asset name, partition key or None)


@dataclass
class StaleReport:
    """Per asset (and partition): 'fresh', 'stale' or 'missing', with the causes of the stale ones."""

    status: dict[Key, str] = field(default_factory=dict)
    causes: dict[Key, list[str]] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)  # batches out of the pair views until recomputed for the current policy

    def of(self, name: str, partition: str | None = None) -> str:
        return self.status[(name, partition)]

    def keys(self, state: str) -> list[Key]:
        return sorted((k for k, v in self.status.items() if v == state), key=lambda k: (k[0], k[1] or ""))

    def needs_work(self, name: str, partition: str | None = None) -> bool:
        return self.status.get((name, partition), "missing") != "fresh"


def stale_report(defs: dg.Definitions, instance: dg.DagsterInstance, partitions: list[str] | None = None,
                 smda: SMDAResource | None = None) -> StaleReport:
    """Status of every materialisable asset of `defs`; partitioned ones per partition (default: all partitions).

    Args:
        smda: the resource whose config the results should follow (default: the one `defs` holds,
            which reads `$SMDA_CONFIG`); its inputs' content hashes give the expected versions.
    """
    from smda_core.store.state import warehouse_state
    from smda_core.store.versions import expected_versions, input_versions

    if smda is None:
        held = (defs.resources or {}).get("smda")
        smda = held if isinstance(held, SMDAResource) else SMDAResource()
    parts = list(partitions) if partitions is not None else list(instance.get_dynamic_partitions(sft_batches.name))
    expected = expected_versions(input_versions(smda.config()), parts)
    state = warehouse_state(smda.warehouse, smda.stage, parts)
    parents, partitioned = _graph(defs)
    report = StaleReport(waiting=state.waiting())
    latest: dict[Key, dg.EventLogRecord | None] = {}
    for name in TopologicalSorter(parents).static_order():
        if name not in partitioned:
            continue  # an observable input, not materialised
        for pk in (parts if partitioned[name] else [None]):
            key = (name, pk)
            latest[key] = record = latest_materialization(instance, name, pk)
            upstream = [(p, q) for p in parents[name] if p in partitioned
                        for q in (([pk] if pk is not None else parts) if partitioned[p] else [None])]
            if record is None:
                report.status[key] = "missing"
                continue
            if key in expected:
                causes = _version_causes(report, key, record, expected[key], partitioned)
            else:
                causes = _newer_upstream(record, upstream, latest)
            causes += _upstream_causes(report, upstream, pk)
            lacking = [] if causes else _not_held(name, pk, state, expected)
            report.status[key] = "missing" if lacking else "stale" if causes else "fresh"
            if causes or lacking:
                report.causes[key] = list(dict.fromkeys(causes or lacking))
    return report


def _not_held(name: str, batch: str | None, state, expected: dict) -> list[str]:
    """Why the warehouse does not hold a result the instance recorded as fresh (nothing when it does)."""
    from smda_core.store.versions import BATCH_ASSETS, POLICY_ASSETS, READOUT_ASSETS

    where = "not in the warehouse"
    if not state.exists:
        return [f"{where}: the file does not exist (the instance recorded it; was it deleted or moved?)"]
    policy = expected[("policy", None)].value
    if name in READOUT_ASSETS and state.readout_version != expected[(name, None)].value:
        return [f"{where}: it holds " + ("no probe readout" if state.readout_version is None
                                          else f"the probe readout {state.readout_version}")]
    if name in POLICY_ASSETS and state.policy_version != policy:
        return [f"{where}: it holds " + ("no policy version" if state.policy_version is None
                                          else f"the policy {state.policy_version}")]
    if name in BATCH_ASSETS and batch is not None:
        b = state.batch(batch)
        if state.attributed(batch, policy):
            return []
        if name in ("pair_attribution", "pair_summary"):
            return [f"{where}: no pair rows of this batch against the current policy, loaded or staged"]
        if name == "pair_shifts" and b.shifts_policy_version != policy:
            return [f"{where}: no staged shifts of this batch against the current policy"]
        if name == "sft_pairs" and not b.staged_pairs:
            return [f"{where}: no staged pairs of this batch"]
    if name == "loaded_batches" and state.unloaded():
        return [f"staged but not loaded: {', '.join(state.unloaded())}"]
    return []


def _graph(defs: dg.Definitions) -> tuple[dict[str, list[str]], dict[str, bool]]:
    """Every asset's parents, and for the materialisable ones whether they are partitioned."""
    materialisable = {k.to_user_string() for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) for k in a.keys}
    specs = defs.resolve_all_asset_specs()
    parents = {s.key.to_user_string(): [d.asset_key.to_user_string() for d in s.deps] for s in specs}
    partitioned = {s.key.to_user_string(): s.partitions_def is not None for s in specs
                   if s.key.to_user_string() in materialisable}
    return parents, partitioned


def _version_causes(report: StaleReport, key: Key, record: dg.EventLogRecord, expected: Version,
                    partitioned: dict[str, bool]) -> list[str]:
    """Why a result's recorded version is not the expected one (nothing when it is)."""
    from smda_core.store.versions import INPUTS

    recorded = recorded_version(record)
    if recorded == expected.value:
        return []
    was = recorded_parts(record)
    causes: list[str] = []
    for part, version in expected.parts.items():
        if part not in was or was[part] == version:
            continue
        if part in INPUTS:
            causes.append(f"{part}: changed since this was computed")
        elif part in partitioned:
            up = (part, key[1] if partitioned[part] else None)
            state = report.status.get(up, "missing")
            causes.extend(report.causes.get(up, []) if state == "stale" else [])
            causes.append(f"{part} is {state}" if state != "fresh" else f"{part}: recomputed since this was computed")
        else:
            causes.append(f"{part}: differs from what this was computed from")
    return causes or [f"computed from other inputs (data version {recorded}; now {expected.value})"]


def _upstream_causes(report: StaleReport, upstream: list[Key], partition: str | None) -> list[str]:
    """The upstream results that are stale or missing (by partition count for a partitioned one)."""
    bad: dict[str, list[str | None]] = {}
    for p, q in upstream:
        if report.status[(p, q)] != "fresh":
            bad.setdefault(p, []).append(q)
    causes = []
    for p, qs in bad.items():
        states = " or ".join(sorted({report.status[(p, q)] for q in qs}))
        if qs in ([partition], [None]):  # the same partition, or an unpartitioned result
            causes.append(f"{p} is {states}")
        elif len(qs) == 1:
            causes.append(f"{p}[{qs[0]}] is {states}")
        else:
            causes.append(f"{p}: {len(qs)} partitions {states}")
    return causes


def _newer_upstream(record: dg.EventLogRecord, upstream: list[Key], latest: dict[Key, dg.EventLogRecord | None]) -> list[str]:
    """Upstream results materialised after this one (it was built from older ones)."""
    newer: dict[str, int] = {}
    for p, q in upstream:
        other = latest.get((p, q))
        if other is not None and other.storage_id > record.storage_id:
            newer[p] = newer.get(p, 0) + 1
    return [f"{p}: materialised again since" + (f" ({n} partitions)" if n > 1 else "") for p, n in newer.items()]
