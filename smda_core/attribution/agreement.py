"""How far a cheaper tier agrees with `exact` on the same pairs (DESIGN §4 "Three tiers", `v_method_agreement`).

Per score (columns of pair_summary) and per policy feature (Δβ and its ΔX / ΔY pathways from
pair_attribution): the Spearman across the pairs both tiers scored, and the median relative error
`|cheap − exact| / |exact|` (over pairs where exact is not zero). Pure numpy and pandas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from smda_core.attribution import score_names
from smda_core.attribution.separation import spearman

SUMMARY_SCORES = score_names.ONE_METHOD
PATHWAYS = {"delta_beta": "delta_beta", "via_x": "via_x", "via_y": "via_y"}


def _row(score: str, feature_id: int | None, method: str, reference: str, a: np.ndarray, b: np.ndarray) -> dict:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    nz = np.abs(a) > 0
    rel = float(np.median(np.abs(b[nz] - a[nz]) / np.abs(a[nz]))) if nz.any() else float("nan")
    rho = spearman(a, b) if len(a) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")
    return {"score": score, "feature_id": feature_id, "method": method, "reference": reference, "n_pairs": int(len(a)),
            "spearman": float(rho), "median_rel_err": rel}


def method_agreement(reference_summary: pd.DataFrame, other_summary: pd.DataFrame, *, method: str,
                     reference: str = "exact", reference_attribution: pd.DataFrame | None = None,
                     other_attribution: pd.DataFrame | None = None, reference_method: str = "refit",
                     scores: Sequence[str] = SUMMARY_SCORES) -> pd.DataFrame:
    """One row per score and per (pathway, feature): agreement of `other` (tier `method`) with `reference`.

    Summaries need `pair_id` and the score columns; attributions need pair_id, feature_id, method and the
    pathway columns (the reference's rows of `reference_method`, the other's of `method`). Pairs are
    matched by id; only pairs both tiers scored count. The mean over features of each pathway is added
    as `feature_id = NULL` rows named `<pathway>:median` (the median Spearman over features).
    """
    rows = []
    s = reference_summary.merge(other_summary, on="pair_id", suffixes=("_ref", "_other"))
    for name in scores:
        if f"{name}_ref" in s and f"{name}_other" in s:
            rows.append(_row(name, None, method, reference, s[f"{name}_ref"].to_numpy(float), s[f"{name}_other"].to_numpy(float)))
    if reference_attribution is not None and other_attribution is not None:
        ra = reference_attribution[reference_attribution["method"] == reference_method]
        oa = other_attribution[other_attribution["method"] == method]
        a = ra.merge(oa, on=["pair_id", "feature_id"], suffixes=("_ref", "_other"))
        for pathway, col in PATHWAYS.items():
            per_feature = []
            for fid, grp in a.groupby("feature_id", sort=True):
                row = _row(pathway, int(fid), method, reference, grp[f"{col}_ref"].to_numpy(float),
                           grp[f"{col}_other"].to_numpy(float))
                rows.append(row)
                per_feature.append(row)
            if per_feature:
                rhos = np.array([r["spearman"] for r in per_feature])
                errs = np.array([r["median_rel_err"] for r in per_feature])
                rows.append({"score": f"{pathway}:median", "feature_id": None, "method": method, "reference": reference,
                             "n_pairs": int(a["pair_id"].nunique()),
                             "spearman": float(np.nanmedian(rhos)) if np.isfinite(rhos).any() else float("nan"),
                             "median_rel_err": float(np.nanmedian(errs)) if np.isfinite(errs).any() else float("nan")})
    return pd.DataFrame(rows, columns=["score", "feature_id", "method", "reference", "n_pairs", "spearman", "median_rel_err"])
