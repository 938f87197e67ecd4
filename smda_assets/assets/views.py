"""The public interface: the SQL views of `sql/`, applied after the tables they read."""


from pathlib import Path

import dagster as dg

from smda_assets.resources import SMDAResource

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


@dg.asset(group_name="warehouse", deps=["probes", "features", "behaviour_scores", "policy", "policy_fit", "feature_labels"],
          description="Creates or replaces every smda.v_* view from sql/*.sql")
def views(smda: SMDAResource) -> dg.MaterializeResult:
    from smda_core.warehouse import apply_views

    con = smda.connect()
    try:
        apply_views(con, SQL_DIR)
        names = [r[0] for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = 'smda' ORDER BY view_name").fetchall()]
    finally:
        con.close()
    return dg.MaterializeResult(metadata={"views": ", ".join(names), "n_views": len(names)})
