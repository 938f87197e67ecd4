"""The curation experiment as an asset: costly (it retrains), so no default run materialises it."""

import dagster as dg

from smda_assets.resources import SMDAResource


@dg.asset(group_name="validation", deps=["pair_summary", "policy"],
          description="Drop pairs by the configured rule, retrain, evaluate against full / oracle / random removals")
def curation_experiment(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_assets.curate import run_curate

    result = run_curate(smda.config_path, smda.warehouse_path, progress=False)
    cmp = result["comparison"]
    context.log.info(f"curation {result['experiment_id']} ({result['rule']}): {cmp}")
    return dg.MaterializeResult(metadata={"experiment_id": result["experiment_id"], "rule": result["rule"],
                                          **{k: float(v) for k, v in cmp.items()}})
