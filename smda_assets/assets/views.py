"""The public interface: the SQL views of `sql/`, applied after the tables they read."""


from pathlib import Path

import dagster as dg

from smda_assets.resources import SMDAResource

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


@dg.asset(group_name="warehouse", deps=["probes", "features", "behaviour_scores", "policy", "policy_fit", "feature_labels", "loaded_batches"],
          automation_condition=dg.AutomationCondition.eager(),
          description="Creates or replaces every smda.v_* view from sql/*.sql")
def views(smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core.store.warehouse import apply_views

    with smda.connect() as con:
        apply_views(con, SQL_DIR)
        names = [r[0] for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = 'smda' ORDER BY view_name").fetchall()]
    return dg.MaterializeResult(metadata={"views": ", ".join(names), "n_views": len(names)})


@dg.asset(group_name="warehouse", deps=["loaded_batches"], automation_condition=dg.AutomationCondition.eager(),
          description="Users' dataset tables from the config (data.metadata), each joined to v_pair_summary "
                      "as smda.v_pair_summary_<name> by pair_id or content hash")
def dataset_metadata(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core.store.metadata import load_metadata

    loads = []
    with smda.connect() as con:
        for source in smda.config().data.metadata:
            loads.append(load_metadata(con, source.path, source.key, on=source.on, name=source.name))
            context.log.info(f"{source.path}: {loads[-1]}")
    return dg.MaterializeResult(metadata={"tables": ", ".join(m.table for m in loads) or "-",
                                          "views": ", ".join(m.view for m in loads) or "-",
                                          "matched": sum(m.matched for m in loads)})


@dg.asset(group_name="warehouse", deps=["views"], automation_condition=dg.AutomationCondition.eager(),
          description="PNG figures of the views (policy coefficients, refusal per category, ΔX/ΔY pathways, "
                      "interference) in <warehouse stem>.files/plots/ beside the DuckDB file")
def plots(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core.report.plots import write_plots

    written = write_plots(smda.warehouse, smda.plots)
    context.log.info(f"{len(written)} figures in {smda.plots}")
    return dg.MaterializeResult(metadata={name: dg.MetadataValue.path(str(path)) for name, path in written.items()})
