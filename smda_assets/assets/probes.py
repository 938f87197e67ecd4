"""Probe-side assets: the probe file, one forward pass (features + behaviour), the policy, labels."""


import dagster as dg

from smda_assets.assets._meta import table_metadata
from smda_assets.provenance import computed_from
from smda_assets.resources import SMDAResource

EAGER = dg.AutomationCondition.eager()
READOUT_INPUTS = ["model_files", "sae_files", "probe_file", "readout_settings"]


@dg.multi_asset(
    specs=[
        dg.AssetSpec("probes", group_name="probes", deps=READOUT_INPUTS, automation_condition=EAGER,
                     description="Validated probe prompts with category and harmful labels"),
        dg.AssetSpec("features", group_name="probes", deps=READOUT_INPUTS, automation_condition=EAGER,
                     description="Sparse SAE features (probe, feature, activation ≠ 0)"),
        dg.AssetSpec("behaviour_scores", group_name="probes", deps=READOUT_INPUTS, automation_condition=EAGER,
                     description="Refusal behaviour y, refusal_prob, refused"),
    ],
    can_subset=False,
)
def probe_readout(context: dg.AssetExecutionContext, smda: SMDAResource):
    """Load model + SAE, read every probe once: features at the configured position and behaviour."""
    from smda_core.api import load_runtime, measure_probes
    from smda_core.runtime import feature_examples, maxima_table
    from smda_core.store.tables import probe_tables

    cfg = smda.config()
    version = computed_from(context, smda, "probes")  # before reading: a change meanwhile leaves it stale
    runtime = load_runtime(cfg)
    context.log.info(f"model {runtime.sources.model_name}, SAE {runtime.sources.sae_name}, hook {runtime.hook_name}, "
                     f"{runtime.probes.num_rows} probes")
    scores = measure_probes(runtime)
    info = {"model": runtime.sources.model_name, "sae": runtime.sources.sae_name, "hook": runtime.hook_name,
            "position": cfg.features.position, "behaviour": cfg.behaviour.kind, "dtype": cfg.model.dtype,
            "readout_version": version["data_version"].value}  # what the warehouse holds, against the instance's memory
    tables = probe_tables(runtime.probes, scores, info)
    smda.write({**tables, "feature_maxima": maxima_table(scores), "feature_examples": feature_examples(runtime, scores)})
    for name in ("probes", "features", "behaviour_scores"):
        yield dg.MaterializeResult(asset_key=name, metadata=table_metadata(tables[name]), **version)


@dg.multi_asset(
    specs=[
        dg.AssetSpec("policy", group_name="policy", deps=["features", "behaviour_scores", "policy_settings"],
                     automation_condition=EAGER, description="The symbolic policy: selected features and ridge coefficients"),
        dg.AssetSpec("policy_fit", group_name="policy", deps=["features", "behaviour_scores", "policy_settings"],
                     automation_condition=EAGER, description="R², LOO R², λ, held-out accuracy against the majority baseline"),
        dg.AssetSpec("feature_labels", group_name="policy", deps=["features", "policy_settings"],
                     automation_condition=EAGER, description="Feature names: imported export or automatic labels"),
    ],
    check_specs=[dg.AssetCheckSpec("beats_majority_baseline", asset="policy_fit")],
    can_subset=False,
)
def policy_assets(context: dg.AssetExecutionContext, smda: SMDAResource):
    """Fit the policy on the stored probe readout, label its features, render the formula (no model loaded)."""
    from smda_core.api import feature_labels, formula
    from smda_core.policy.fit import fit_policy
    from smda_core.store.tables import policy_tables

    cfg = smda.config()
    version = computed_from(context, smda, "policy")  # the readout it loads and the policy settings
    scores, probes, info = smda.readout()
    policy = fit_policy(scores, cfg.policy)
    labels = feature_labels(policy, probes, cfg.policy.labels_path)
    text = formula(policy, labels, cfg.behaviour.kind)
    tables = policy_tables(policy, scores, labels, preset=cfg.preset, model=info["model"], sae=info["sae"],
                           hook=info["hook"], position=info["position"], behaviour=info["behaviour"], dtype=info["dtype"],
                           formula=text, policy_version=version["data_version"].value, score_name=cfg.attribution.score)
    smda.write(tables)  # one transaction: the policy and its version change together
    context.log.info(text)
    for warning in policy.warnings:
        context.log.warning(warning)
    fit = {"lambda": policy.lam, "r2": policy.r2, "loo_r2": policy.loo_r2, "accuracy": policy.accuracy,
           "majority_baseline": policy.majority_baseline, "k": policy.k}
    yield dg.MaterializeResult(asset_key="policy", metadata={**table_metadata(tables["policy_features"]),
                                                              "formula": dg.MetadataValue.md(f"`{text}`"),
                                                              "coefficients": _coefficients_preview(tables, text)},
                               **version)
    yield dg.MaterializeResult(asset_key="policy_fit", metadata={**table_metadata(tables["policy_fit"]), **fit},
                               **version)
    yield dg.MaterializeResult(asset_key="feature_labels", metadata=table_metadata(tables["feature_labels"]),
                               **version)
    passed = bool(policy.accuracy > policy.majority_baseline)
    yield dg.AssetCheckResult(
        check_name="beats_majority_baseline", asset_key="policy_fit", passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if passed else next(w for w in policy.warnings if "majority baseline" in w),
        metadata={"accuracy": policy.accuracy, "majority_baseline": policy.majority_baseline})


def _coefficients_preview(tables: dict, formula: str) -> dg.MetadataValue:
    """The formula and a bar chart of the largest coefficients with their labels, as Markdown for the UI."""
    from smda_core.report.previews import policy_markdown

    features = tables["policy_features"].select(["feature_id", "coef"]).to_pandas()
    labels = tables["feature_labels"].select(["feature_id", "label"]).to_pandas()
    return dg.MetadataValue.md(policy_markdown(features.merge(labels, on="feature_id", how="left"), formula))


@dg.asset_check(asset="features", description="No NaN or infinite activation was stored")
def features_are_finite(smda: SMDAResource) -> dg.AssetCheckResult:
    from smda_core.store.warehouse import session

    with session(smda.warehouse, read_only=True) as con:
        bad = con.execute("SELECT count(*) FROM smda.features WHERE NOT isfinite(activation)").fetchone()[0]
    return dg.AssetCheckResult(passed=bad == 0, metadata={"non_finite": int(bad)})
