"""What is stale or missing, by Dagster's own data-version bookkeeping.

Dagster marks an asset (partition) STALE when a dependency's data version differs from the one
recorded when it was materialised, or its code version changed. That is one hop: after the
probe file changes, the probe readout is stale, but the policy fitted on the old readout only
becomes stale once the readout is recomputed. Users ask the other question ("is this result
out of date?"), so :func:`stale_report` also marks everything downstream of a stale asset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from smda_assets.partitions import sft_batches

Key = tuple[str, str | None]  # (asset name, partition key or None)


@dataclass
class StaleReport:
    """Per asset (and partition): 'fresh', 'stale' or 'missing', with Dagster's own causes for the stale ones."""

    status: dict[Key, str] = field(default_factory=dict)
    causes: dict[Key, list[str]] = field(default_factory=dict)

    def of(self, name: str, partition: str | None = None) -> str:
        return self.status[(name, partition)]

    def keys(self, state: str) -> list[Key]:
        return sorted((k for k, v in self.status.items() if v == state), key=lambda k: (k[0], k[1] or ""))

    def needs_work(self, name: str, partition: str | None = None) -> bool:
        return self.status.get((name, partition), "missing") != "fresh"


def stale_report(defs: dg.Definitions, instance: dg.DagsterInstance, partitions: list[str] | None = None) -> StaleReport:
    """Status of every materialisable asset; partitioned ones per partition (default: all partitions)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=graph)
    resolver = CachingStaleStatusResolver(instance, graph, view)
    parts = partitions if partitions is not None else instance.get_dynamic_partitions(sft_batches.name)
    report = StaleReport()
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable:
            continue
        name = key.to_user_string()
        for pk in (parts if node.is_partitioned else [None]):
            status = resolver.get_status(key, pk)
            state = {StaleStatus.MISSING: "missing", StaleStatus.STALE: "stale"}.get(status, "fresh")
            if state == "stale":
                report.causes[(name, pk)] = [f"{c.key.asset_key.to_user_string()}: {c.reason}"
                                             for c in resolver.get_stale_root_causes(key, pk)]
            if state == "fresh":
                for parent in node.parent_keys:
                    parent_node = graph.get(parent)
                    parent_key = (parent.to_user_string(), pk if parent_node.is_partitioned else None)
                    if parent_node.is_materializable and report.status.get(parent_key) in ("stale", "missing"):
                        state = "stale"
                        report.causes.setdefault((name, pk), []).append(f"{parent_key[0]} is {report.status[parent_key]}")
            report.status[(name, pk)] = state
    return report
