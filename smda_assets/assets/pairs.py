"""SFT-side assets, one partition per SFT batch (one file's content): the pairs, their shifts, their attribution.

Partition steps run in parallel and never open DuckDB: each writes its batch's tables into the
batch's staging folder (smda_core.staging). `loaded_batches` is the one writer: it loads every
completed batch whose staged files changed, and marks superseded batches.
"""

import dagster as dg

from smda_assets.assets._meta import table_metadata
from smda_assets.partitions import sft_batches
from smda_assets.provenance import computed_from
from smda_assets.resources import SMDAResource

EAGER = dg.AutomationCondition.eager()
PAIR_TABLES = ["pair_attribution", "pair_summary", "pair_group_effects", "pair_group_shift", "pair_shifts", "pair_mechanism",
               "method_agreement"]


@dg.asset(partitions_def=sft_batches, group_name="pairs", deps=["probe_file"],
          description="SFT pairs of one batch with every metadata field they arrived with, checked against the probes, "
                      "the model's context and the pair ids of the other active batches")
def sft_pairs(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core import inputs
    from smda_core.inputs.batches import find_batch
    from smda_core.model.chat import check_pair_lengths, context_length, load_tokenizer
    from smda_core.sources import resolve_sources

    version = computed_from(context, smda, "sft_pairs")  # before reading: a change meanwhile leaves it stale
    cfg = smda.config()
    batch = context.partition_key
    source = find_batch(cfg, batch)
    if source is None:
        raise dg.Failure(f"batch {batch}: no SFT file holds this content now (it was changed or removed); "
                         f"its staged copy, if any, is in {smda.stage.folder(batch)}")
    pairs = inputs.read_sft_pairs(source.path, batch_id=batch)  # errors name the file, line and field
    src = resolve_sources(cfg, progress=False)
    probes = inputs.read_probes(src.probes)
    overlap = inputs.check_overlap(probes, pairs, allow=cfg.data.allow_probe_overlap)
    tokenizer, model_config = load_tokenizer(src.model, trust_remote_code=cfg.model.trust_remote_code)
    check_pair_lengths(tokenizer, zip(*(pairs[c].to_pylist() for c in ("prompt", "response", "source_file", "line"))),
                       context_length(model_config))
    inputs.check_pair_ids_unique(pairs, smda.pairs_elsewhere(batch, str(source.path),
                                                             context.instance.get_dynamic_partitions(sft_batches.name)))
    smda.stage.write_table(batch, "sft_pairs", pairs)
    smda.stage.save_json(batch, "source", {"source_file": str(source.path), "content_hash": source.content_hash})
    context.log.info(f"batch {batch}: {pairs.num_rows} pairs from {source.path}")
    return dg.MaterializeResult(metadata=table_metadata(pairs, source_file=str(source.path), probe_overlap=overlap.num_rows),
                                **version)


@dg.asset(partitions_def=sft_batches, group_name="pairs", deps=["sft_pairs", "policy", "shift_settings"],
          automation_condition=EAGER,
          description="ΔX, ΔY of every pair over every probe after one optimiser step on that pair")
def pair_shifts(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core.api import load_runtime
    from smda_core.execution import gradient_cache_folder, measure_batch_shifts, shard_folder
    from smda_core.experiments.tiers import exact_sample

    version = computed_from(context, smda, "pair_shifts")
    cfg = smda.config()
    batch = context.partition_key
    pairs = smda.stage.read_table(batch, "sft_pairs")
    policy, policy_version = smda.stored_policy()
    method = cfg.shifts.method
    meta = {"method": method}
    runtime = load_runtime(cfg, progress=False) if cfg.execution.engine == "local" else None  # one model for both tiers

    def measure(rows, tier: str):
        if cfg.execution.engine == "ray":
            context.log.info(f"batch {batch}: {rows.num_rows} pairs ({tier}) as Ray tasks of {cfg.execution.shard_size} pairs")
        return measure_batch_shifts(cfg, policy, rows, method=tier, runtime=runtime,
                                    folder=shard_folder(cfg, smda.stage.folder(batch), batch, tier),
                                    cache=gradient_cache_folder(cfg, smda.files),
                                    on_shard=lambda record, done, total: context.log.info(_shard_line(record, done, total)))

    if method == "exact":
        smda.stage.remove(batch, "tier.npz")
        exact_pairs = pairs
    else:  # the cheaper tier for every pair, exact on the validation sample, both on the engine
        run = measure(pairs, method)
        tier = run.result
        smda.stage.save_tier(batch, tier)
        exact_pairs = exact_sample(pairs, cfg.validation.sample, cfg.validation.seed)
        meta.update(seconds_per_pair=float(tier.seconds.mean()), exact_sample=exact_pairs.num_rows,
                    **_engine_metadata(run, method))
        context.log.info(f"{method}: {len(tier.pair_ids)} pairs, {tier.seconds.mean():.4f} s per pair ({run.engine} engine"
                         + (f", Ray at {run.address}" if run.address else "") + ")")
    if exact_pairs.num_rows:
        run = measure(exact_pairs, "exact")
        shifts = run.result
        smda.stage.save_shifts(batch, shifts)
        meta.setdefault("seconds_per_pair", float(shifts.seconds.mean()))
        meta.update(exact_pairs=len(shifts.pair_ids), exact_seconds_per_pair=float(shifts.seconds.mean()),
                    dtype=shifts.settings.dtype, **_engine_metadata(run, "exact" if method != "exact" else None))
        context.log.info(f"exact: {len(shifts.pair_ids)} pairs, {shifts.seconds.mean():.2f} s per pair ({run.engine} engine"
                         + (f", Ray at {run.address}" if run.address else "") + ")")
    else:
        smda.stage.remove(batch, "shifts.npz")
    smda.stage.save_json(batch, "shifts_policy", {"policy_version": policy_version})
    return dg.MaterializeResult(metadata={"pairs": pairs.num_rows, **meta}, **version)


def _shard_line(record: dict, done: int, total: int) -> str:
    retried = f", attempt {record['attempts']}" if record.get("attempts", 1) > 1 else ""
    return (f"shard {done}/{total} done: {len(record['pair_ids'])} pairs in {record['seconds']:.1f} s "
            f"on {record.get('host')} pid {record.get('pid')}{retried}")


def _engine_metadata(run, prefix: str | None = None) -> dict:
    """Where a batch's pair steps ran, for the Dagster UI: the engine, the Ray address, each shard. With a cheaper
    tier, the exact sample's entries are prefixed `exact_`; the tier's keep the plain names."""
    if run.engine == "local":
        meta = {"engine": "local"}
    else:
        rows = [{"shard": r["shard"], "pairs": len(r["pair_ids"]), "seconds": round(r["seconds"], 2), "host": r.get("host"),
                 "attempts": r.get("attempts", 1)} for r in run.shards]
        lines = ["| shard | pairs | seconds | host | attempts |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['shard']} | {r['pairs']} | {r['seconds']} | {r['host']} | {r['attempts']} |" for r in rows]
        meta = {"engine": "ray", "ray_address": run.address or "-", "shards": len(rows), "retried_shards": len(run.retried),
                "shard_table": dg.MetadataValue.md("\n".join(lines))}
    if prefix:
        meta = {"engine": meta["engine"], **{f"{prefix}_{k}": v for k, v in meta.items() if k not in ("engine", "ray_address")},
                **({"ray_address": meta["ray_address"]} if "ray_address" in meta else {})}
    return meta


@dg.multi_asset(
    specs=[
        dg.AssetSpec("pair_attribution", group_name="pairs", deps=["pair_shifts", "policy"], automation_condition=EAGER,
                     description="Δβ per pair and feature under each method, split into ΔX / ΔY pathways"),
        dg.AssetSpec("pair_summary", group_name="pairs", deps=["pair_shifts", "policy"], automation_condition=EAGER,
                     description="Per pair: alignment, correctness shift, dy, flips, interference"),
    ],
    partitions_def=sft_batches,
    check_specs=[dg.AssetCheckSpec("every_pair_attributed", asset="pair_attribution")],
    can_subset=False,
)
def pair_attribution_assets(context: dg.AssetExecutionContext, smda: SMDAResource):
    from smda_core.experiments.tiers import attribute_tiers

    versions = {key: computed_from(context, smda, key) for key in ("pair_attribution", "pair_summary")}
    cfg = smda.config()
    batch = context.partition_key
    scores = smda.readout()[0]
    policy, policy_version = smda.stored_policy(scores)
    measured = smda.stage.load_json(batch, "shifts_policy").get("policy_version") \
        if smda.stage.has(batch, "shifts_policy.json") else None
    if measured != policy_version:
        raise dg.Failure(f"batch {batch}: its shifts were measured against policy {measured}, and the warehouse's "
                         f"policy is now {policy_version}: materialise pair_shifts for it again (smda ingest does)")
    pairs = smda.stage.read_table(batch, "sft_pairs")
    tables = attribute_tiers(smda.stage, batch, policy, scores, pairs, cfg, policy_version)
    written = [name for name in PAIR_TABLES if name in tables]
    for name in written:
        smda.stage.write_table(batch, name, tables[name])
    source = smda.stage.load_json(batch, "source")
    smda.stage.commit(batch, ["sft_pairs", *written], source_file=source["source_file"],
                      content_hash=source["content_hash"], n_pairs=pairs.num_rows, policy_version=policy_version)
    summary = tables["pair_summary"].to_pandas()
    top = summary.sort_values("interference", ascending=False).head(5)[["pair_id", "dominant_feature", "interference", "flagged"]]
    yield dg.MaterializeResult(asset_key="pair_attribution", metadata=table_metadata(tables["pair_attribution"]),
                               **versions["pair_attribution"])
    yield dg.MaterializeResult(asset_key="pair_summary", metadata={
        **table_metadata(tables["pair_summary"]), "flagged_share": float(summary["flagged"].astype(float).mean()),
        "most_interfering": dg.MetadataValue.md(top.to_markdown(index=False) if _has_tabulate() else top.to_string(index=False)),
        "scores": _scores_preview(summary, pairs, cfg.attribution.score)},
        **versions["pair_summary"])
    attributed = tables["pair_attribution"].select(["pair_id", "method"]).to_pylist() if "pair_attribution" in tables else []
    methods = cfg.attribution.methods if cfg.shifts.method == "exact" else (() if cfg.shifts.method == "screen" else ("gradient",))
    per_method = {m: len({r["pair_id"] for r in attributed if r["method"] == m}) for m in methods}
    yield dg.AssetCheckResult(check_name="every_pair_attributed", asset_key="pair_attribution",
                              passed=all(v == pairs.num_rows for v in per_method.values()),
                              metadata={"pairs": pairs.num_rows, **{f"attributed_{m}": v for m, v in per_method.items()}})


@dg.asset(group_name="warehouse", deps=["sft_pairs", "pair_attribution", "pair_summary"], automation_condition=EAGER,
          description="The one writer of SFT batches: loads each completed batch's staged tables into DuckDB "
                      "(only batches whose files changed), and marks batches replaced by a file's new content superseded")
def loaded_batches(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core.store.staging import load_batches

    keys = context.instance.get_dynamic_partitions(sft_batches.name)
    with smda.connect() as con:
        report = load_batches(con, smda.stage, keys)
    context.log.info(f"loaded {report.loaded}; unchanged {len(report.unchanged)}; not staged {report.not_staged}; "
                     f"superseded {report.superseded}")
    if report.refused:  # the others are loaded; these stay out of the warehouse, loudly
        raise dg.Failure("; ".join(f"batch {b} not loaded: {why}" for b, why in report.refused.items()))
    return dg.MaterializeResult(metadata={"loaded": ", ".join(report.loaded) or "-", "n_loaded": len(report.loaded),
                                          "unchanged": len(report.unchanged), "not_staged": ", ".join(report.not_staged) or "-",
                                          "superseded": ", ".join(report.superseded) or "-"})


def _scores_preview(summary, pairs, score_name: str) -> dg.MetadataValue:
    """The batch's pairs, recommended score against the paper's alignment (coloured by `kind` where the pairs
    carry one), as Markdown for the UI."""
    from smda_core.report.previews import pairs_markdown

    if "kind" in pairs.column_names:
        summary = summary.merge(pairs.select(["pair_id", "kind"]).to_pandas(), on="pair_id", how="left")
    return dg.MetadataValue.md(pairs_markdown(summary, score_name))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
