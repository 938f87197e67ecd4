"""The figures a real-model world is judged by, read back from its warehouse (read-only SQL).

Refusal gap harmful vs harmless, mean refusal per category, the policy fit, `linear` vs
`refit` agreement, and the bad-pair AUC table (DESIGN §4 "What the scores mean").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def linear_vs_refit(warehouse: str | Path) -> dict:
    """Agreement of the paper's first-order attribution with the exact refit, per (pair, feature) Δβ and per pair."""
    from scipy.stats import spearmanr

    from smda_core.store.query import query

    t = query(warehouse, """
        SELECT r.pair_id, r.feature_id, r.delta_beta AS refit, l.delta_beta AS linear
        FROM smda.v_pair_attribution r JOIN smda.v_pair_attribution l USING (pair_id, feature_id)
        WHERE r.method = 'refit' AND l.method = 'linear'""").to_pandas()
    if t.empty:
        return {}
    rel = (t["linear"] - t["refit"]).abs() / t["refit"].abs().clip(lower=1e-300)
    s = query(warehouse, "SELECT alignment_refit, alignment_linear FROM smda.v_pair_summary").to_pandas()
    return {"n": int(len(t)), "median_relative_gap": float(rel.median()),
            "sign_agreement": float((np.sign(t["linear"]) == np.sign(t["refit"])).mean()),
            "spearman_delta_beta": float(spearmanr(t["linear"], t["refit"]).statistic),
            "spearman_alignment": float(spearmanr(s["alignment_linear"], s["alignment_refit"]).statistic) if len(s) > 2 else None}


def world_figures(warehouse: str | Path) -> dict:
    """Everything the README section reports, as plain numbers and tables (lists of dicts)."""
    from smda_core.attribution.separation import separation_table
    from smda_core.store.query import query

    probes = query(warehouse, "SELECT harmful, avg(refusal_prob) AS mean_refusal, count(*) AS n FROM smda.v_probe_scores GROUP BY harmful").to_pylist()
    by = {r["harmful"]: r["mean_refusal"] for r in probes}
    cats = query(warehouse, """SELECT category, harmful, n, mean_refusal_prob, mean_predicted
                              FROM smda.v_category_gaps ORDER BY harmful DESC, mean_refusal_prob""").to_pylist()
    fit = query(warehouse, """SELECT "lambda", r2, loo_r2, accuracy, majority_baseline, intercept, n_probes, k, formula
                             FROM smda.v_policy_fit LIMIT 1""").to_pylist()
    pairs = query(warehouse, "SELECT s.*, p.kind, p.harmful FROM smda.v_pair_summary s JOIN smda.v_sft_pairs p USING (pair_id)").to_pandas()
    sep = separation_table(pairs) if "kind" in pairs else None
    harmful_cats = [c for c in cats if c["harmful"]]
    return {
        "mean_refusal_harmful": by.get(True), "mean_refusal_harmless": by.get(False),
        "refusal_gap": (by.get(True) or 0.0) - (by.get(False) or 0.0),
        "categories": cats,
        "lowest_harmful_category": min(harmful_cats, key=lambda c: c["mean_refusal_prob"])["category"] if harmful_cats else None,
        "policy_fit": fit[0] if fit else None,
        "linear_vs_refit": linear_vs_refit(warehouse),
        "separation": sep.to_dict("records") if sep is not None else [],
    }
