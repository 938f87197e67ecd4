"""Compare two warehouses built from the same world (e.g. before and after a refactor): the policy fit, the policy's
features and coefficients, every numeric column of v_pair_summary and v_pair_attribution (largest absolute difference).

    python benchmarks/compare_warehouses.py OLD.duckdb NEW.duckdb

Reads both files read-only with plain DuckDB (no product code), so it can judge the product's own output.
"""
import sys
import duckdb
import numpy as np
import pandas as pd

a, b = sys.argv[1], sys.argv[2]
def q(path, sql):
    con = duckdb.connect(path, read_only=True)
    try:
        return con.sql(sql).df()
    finally:
        con.close()
fit_cols = '"lambda", r2, loo_r2, accuracy, majority_baseline, intercept, n_probes, k, formula'
fa, fb = q(a, f"SELECT {fit_cols} FROM smda.v_policy_fit"), q(b, f"SELECT {fit_cols} FROM smda.v_policy_fit")
print("policy fit before:", fa.drop(columns="formula").to_dict("records"))
print("policy fit after: ", fb.drop(columns="formula").to_dict("records"))
print("formula equal:", fa.formula[0] == fb.formula[0])
pa_, pb_ = q(a, "SELECT * FROM smda.v_policy ORDER BY feature_id"), q(b, "SELECT * FROM smda.v_policy ORDER BY feature_id")
print("policy features equal:", pa_.feature_id.tolist() == pb_.feature_id.tolist(), "max |Δcoef|:", float(np.abs(pa_.coef - pb_.coef).max()))
sa, sb = q(a, "SELECT * FROM smda.v_pair_summary ORDER BY pair_id"), q(b, "SELECT * FROM smda.v_pair_summary ORDER BY pair_id")
assert sa.pair_id.tolist() == sb.pair_id.tolist()
worst = 0.0
for c in sa.columns:
    if c in sb.columns and pd.api.types.is_numeric_dtype(sa[c]) and not pd.api.types.is_bool_dtype(sa[c]):
        d = float(np.nanmax(np.abs(sa[c].astype(float).to_numpy() - sb[c].astype(float).to_numpy()))) if len(sa) else 0.0
        if c != "seconds":
            worst = max(worst, d)
            print(f"  {c:22s} max |diff| = {d:.3g}")
    elif c in sb.columns and c not in ("batch_id",):
        print(f"  {c:22s} identical: {sa[c].astype(str).tolist() == sb[c].astype(str).tolist()}")
print(f"v_pair_summary: {len(sa)} pairs; largest difference over numeric columns (seconds excluded): {worst:.3g}")
aa = q(a, "SELECT pair_id, feature_id, method, delta_beta, via_x, via_y, via_xy FROM smda.v_pair_attribution ORDER BY ALL")
ab = q(b, "SELECT pair_id, feature_id, method, delta_beta, via_x, via_y, via_xy FROM smda.v_pair_attribution ORDER BY ALL")
print("v_pair_attribution rows", len(aa), len(ab), "max |Δ|:", float(np.abs(aa[["delta_beta", "via_x", "via_y", "via_xy"]].to_numpy() - ab[["delta_beta", "via_x", "via_y", "via_xy"]].to_numpy()).max()))
