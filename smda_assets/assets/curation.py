"""The curation experiment as an asset: costly (it retrains), so no default run materialises it."""

import dagster as dg

from smda_assets.resources import SMDAResource


@dg.asset(group_name="validation", deps=["pair_summary", "policy"],
          description="Drop pairs by the configured rule, retrain, evaluate against full / oracle / random removals")
def curation_experiment(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_assets.experiments import curate

    result = curate(smda, progress=False)
    context.log.info(f"curation {result.experiment_id} ({result.rule}): {result.comparison}")
    return dg.MaterializeResult(metadata={"experiment_id": result.experiment_id, "rule": result.rule,
                                          **{k: float(v) for k, v in result.comparison.items()}})
