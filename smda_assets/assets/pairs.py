"""SFT-side assets, one partition per SFT file: the pairs, their measured shifts, their attribution."""


from pathlib import Path

import dagster as dg

from smda_assets.assets._meta import table_metadata
from smda_assets.partitions import sft_batches
from smda_assets.resources import SMDAResource


def batch_files(cfg) -> dict[str, Path]:
    """Batch id → SFT file: the file's stem plus a short hash of its content (a changed file is a new batch)."""
    from smda_core.api import world_sources
    from smda_core.inputs import file_batch_id

    return {file_batch_id(p): Path(p) for p in world_sources(cfg, progress=False)["sft"]}


@dg.asset(partitions_def=sft_batches, group_name="pairs", deps=["probes"],
          description="SFT pairs of one batch with every metadata field they arrived with")
def sft_pairs(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core import inputs

    cfg = smda.config()
    batch = context.partition_key
    files = batch_files(cfg)
    if batch not in files:
        raise dg.Failure(f"batch {batch}: no SFT file with this id among {sorted(files)}")
    pairs = inputs.read_sft_pairs(files[batch], batch_id=batch)
    probes = inputs.read_probes(_probe_file(cfg))
    overlap = inputs.check_overlap(probes, pairs, allow=cfg.data.allow_probe_overlap)
    smda.write({"sft_pairs": pairs}, partition=batch)
    return dg.MaterializeResult(metadata=table_metadata(pairs, source_file=str(files[batch]), probe_overlap=overlap.num_rows))


def _probe_file(cfg) -> str:
    from smda_core.api import world_sources

    return world_sources(cfg, progress=False)["probes"]


@dg.asset(partitions_def=sft_batches, group_name="pairs", deps=["sft_pairs", "policy"],
          description="ΔX, ΔY of every pair over every probe after one optimiser step on that pair")
def pair_shifts(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core import inputs
    from smda_core.api import load_world, measure_shifts

    cfg = smda.config()
    batch = context.partition_key
    world = load_world(cfg, progress=False)
    policy = smda.load("policy")
    pairs = inputs.read_sft_pairs(batch_files(cfg)[batch], batch_id=batch)
    shifts = measure_shifts(world, policy, pairs)
    smda.save(f"shifts/{batch}", shifts)
    context.log.info(f"{len(shifts.pair_ids)} pairs, {shifts.seconds.mean():.2f} s per pair")
    return dg.MaterializeResult(metadata={"pairs": len(shifts.pair_ids), "seconds_per_pair": float(shifts.seconds.mean()),
                                          "dtype": shifts.settings.dtype})


@dg.multi_asset(
    specs=[
        dg.AssetSpec("pair_attribution", group_name="pairs", deps=["pair_shifts", "policy"],
                     description="Δβ per pair and feature under each method, split into ΔX / ΔY pathways"),
        dg.AssetSpec("pair_summary", group_name="pairs", deps=["pair_shifts", "policy"],
                     description="Per pair: alignment, correctness shift, dy, flips, interference"),
    ],
    partitions_def=sft_batches,
    check_specs=[dg.AssetCheckSpec("every_pair_attributed", asset="pair_attribution")],
    can_subset=False,
)
def pair_attribution_assets(context: dg.AssetExecutionContext, smda: SMDAResource):
    from smda_core import inputs
    from smda_core.api import attribute, load_world
    from smda_core.tables import pair_tables

    cfg = smda.config()
    batch = context.partition_key
    policy = smda.load("policy")
    scores = smda.load("probe_scores")
    shifts = smda.load(f"shifts/{batch}")
    pairs = inputs.read_sft_pairs(batch_files(cfg)[batch], batch_id=batch)
    world = load_world(cfg, progress=False)
    attr = attribute(world, policy, scores, shifts, pairs)
    tables = pair_tables(batch, shifts, attr, policy, list(scores.probe_ids), delta_x=cfg.shifts.delta_x)
    smda.write(tables, partition=batch)
    summary = tables["pair_summary"].to_pandas()
    top = summary.sort_values("interference", ascending=False).head(5)[["pair_id", "dominant_feature", "interference", "flagged"]]
    yield dg.MaterializeResult(asset_key="pair_attribution", metadata=table_metadata(tables["pair_attribution"]))
    yield dg.MaterializeResult(asset_key="pair_summary", metadata={
        **table_metadata(tables["pair_summary"]), "flagged_share": float(summary["flagged"].mean()),
        "most_interfering": dg.MetadataValue.md(top.to_markdown(index=False) if _has_tabulate() else top.to_string(index=False))})
    methods = set(tables["pair_attribution"]["method"].to_pylist())
    per_method = {m: len(set(p for p, mm in zip(tables["pair_attribution"]["pair_id"].to_pylist(),
                                                   tables["pair_attribution"]["method"].to_pylist()) if mm == m))
                  for m in cfg.attribution.methods}
    yield dg.AssetCheckResult(check_name="every_pair_attributed", asset_key="pair_attribution",
                              passed=all(v == len(shifts.pair_ids) for v in per_method.values()) and methods == set(cfg.attribution.methods),
                              metadata={"pairs": len(shifts.pair_ids), **{f"attributed_{m}": v for m, v in per_method.items()}})


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
