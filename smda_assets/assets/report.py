"""The HTML report asset: one self-contained file of the views, and its headline figures in the Dagster UI."""

import dagster as dg

from smda_assets.resources import SMDAResource


@dg.asset(group_name="warehouse", deps=["views"], automation_condition=dg.AutomationCondition.eager(),
          description="One self-contained HTML report of the views (policy, category gaps, pairs, mechanism, "
                      "interference, tiers and validation), readable offline: <warehouse stem>.files/report.html")
def report(context: dg.AssetExecutionContext, smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core.report.html import write_report
    from smda_core.report.previews import report_markdown

    written = write_report(smda.warehouse, smda.report)
    context.log.info(f"report {written.path}: {written.n_bytes / 1e6:.1f} MB, {written.n_figures} figures, "
                     f"{written.seconds:.1f} s")
    data = written.data
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(written.path)), "megabytes": round(written.n_bytes / 1e6, 2),
        "seconds": round(written.seconds, 2), "figures": written.n_figures, "sections": ", ".join(written.sections),
        "preview": dg.MetadataValue.md(report_markdown(data.categories, data.pairs, data.score_name))})
