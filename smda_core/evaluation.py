"""Which pair score tells the deliberately bad pairs from the good ones (DESIGN §4 "What the scores mean")."""

from __future__ import annotations

import pandas as pd

from smda_core.attribution import bad_pair_auc

KIND_PAIRS = {
    "harmful prompts: refusal (good) vs compliance (bad)": ("harmful_refusal", "harmful_compliance"),
    "harmless prompts: compliance (good) vs refusal (bad)": ("harmless_compliance", "harmless_refusal"),
}
SCORES = ("alignment_refit", "alignment_linear", "correctness_shift", "dy_harmful", "dy_harmless")


def separation_table(summary: pd.DataFrame, scores=SCORES) -> pd.DataFrame:
    """AUC per score and kind pair: P(score of a good pair > score of a bad pair); 0.5 = no signal, < 0.5 = inverted."""
    rows = []
    for name, (good, bad) in KIND_PAIRS.items():
        sub = summary[summary["kind"].isin([good, bad])]
        for score in scores:
            if score not in sub:
                continue
            auc = 1.0 - bad_pair_auc(sub[score].to_numpy(float), (sub["kind"] == bad).to_numpy())
            rows.append({"comparison": name, "score": score, "auc": round(float(auc), 3),
                         "n_good": int((sub["kind"] == good).sum()), "n_bad": int((sub["kind"] == bad).sum())})
    return pd.DataFrame(rows)
