"""What the product finds on the default demo (DESIGN §4, §7), checked from its views against independent
computations: every kind of bad pair by the recommended score (AUC by counting pairs), a decomposition that
adds up, trigger pairs named by the phrase's features (found here from `v_features`), calibrated interference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from smda_core.store.query import query

GOOD = {"harmful_compliance": "harmful_refusal", "harmless_refusal": "harmless_compliance",
        "harmless_trigger": "harmless_compliance"}
GOAL = {"harmful_compliance": 0.95, "harmless_refusal": 0.95, "harmless_trigger": 0.85}


def auc_by_counting(good: np.ndarray, bad: np.ndarray) -> float:
    """P(a good pair scores above a bad one), ties ½, by comparing every (good, bad) couple."""
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


@pytest.fixture(scope="module")
def pairs(demo_warehouse) -> pd.DataFrame:
    wh = demo_warehouse
    return query(wh, "SELECT s.*, p.kind, p.prompt FROM smda.v_pair_summary s JOIN smda.v_sft_pairs p USING (pair_id)").to_pandas()


def test_the_recommended_score_finds_every_kind_of_bad_pair(pairs):
    for bad, good in GOOD.items():
        auc = auc_by_counting(pairs.loc[pairs.kind == good, "score"].to_numpy(), pairs.loc[pairs.kind == bad, "score"].to_numpy())
        print(bad, round(auc, 3))
        assert auc >= GOAL[bad], (bad, auc)


def test_the_recommended_score_adds_up_over_its_features(pairs, demo_warehouse):
    wh = demo_warehouse
    name = query(wh, "SELECT score_name FROM smda.v_policy_fit").to_pylist()[0]["score_name"]
    # each pair's rows of the score: its effect-fit split (every SAE feature, the rest, the uniform part), or for a
    # pair condemned by its contradiction of the policy, that split over the policy's features and the intercept
    rows = query(wh, "SELECT pair_id, source, activation_part, weight_part FROM smda.v_pair_mechanism "
                     "WHERE score = ? AND source <> 'landing'", [name]).to_pandas()
    rows["part"] = rows.activation_part.fillna(0.0) + rows.weight_part  # effect-fit rows have no activation part
    effect = rows[rows.source.str.startswith("effect-fit")]
    policy = rows[rows.source.str.startswith("policy") & ~rows.pair_id.isin(effect.pair_id)]
    summed = pd.concat([effect, policy]).groupby("pair_id")["part"].sum().reindex(pairs.pair_id)
    assert summed.notna().all()
    rho = spearmanr(summed.to_numpy(), pairs["score"].to_numpy())[0]
    print(name, "completeness", round(rho, 3))
    assert rho >= 0.9


def test_trigger_pairs_are_named_by_the_phrase_features(pairs, demo_warehouse):
    from smda_core.config import load_config

    wh = demo_warehouse
    phrase = load_config(None).demo.trigger_phrase.lower()  # the demo_warehouse fixture builds the default recipe
    probes = query(wh, "SELECT probe_id, prompt FROM smda.v_probe_scores").to_pandas()
    with_phrase = set(probes.probe_id[probes.prompt.str.lower().str.contains(phrase, regex=False)])
    feats = query(wh, "SELECT probe_id, feature_id, activation FROM smda.v_features WHERE position = 'user_max'").to_pandas()
    n_with, n_other = len(with_phrase), len(probes) - len(with_phrase)
    sums = feats.assign(w=feats.probe_id.isin(with_phrase)).groupby(["feature_id", "w"])["activation"].sum().unstack(fill_value=0.0)
    mean_with, mean_other = sums.get(True, 0.0) / n_with, sums.get(False, 0.0) / n_other
    trigger_features = set(sums.index[(mean_with >= 3 * mean_other) & (mean_with > 0)])
    named = pairs.loc[pairs.kind == "harmless_trigger", "harm_feature"]
    share = named.isin(trigger_features).mean()
    print("trigger features", sorted(trigger_features)[:20], "named", named.tolist(), "share", share)
    assert len(named) >= 5 and share >= 0.7


def test_the_interference_flag_is_rare_among_good_pairs_and_finds_trigger_pairs(pairs):
    good = pairs.kind.isin(["harmful_refusal", "harmless_compliance"])
    assert pairs.loc[good, "flagged"].mean() <= 0.15
    auc = auc_by_counting(pairs.loc[pairs.kind == "harmless_trigger", "interference"].to_numpy(),
                          pairs.loc[pairs.kind == "harmless_compliance", "interference"].to_numpy())
    print("interference AUC trigger vs good harmless", round(auc, 3))
    assert auc >= 0.8


def test_named_features_show_their_strongest_probe_with_the_token_marked(pairs, demo_warehouse):
    wh = demo_warehouse
    named = sorted(set(pairs["harm_feature"].dropna().astype(int)) - {-1})  # −1: the pair's harm lands nowhere
    ex = query(wh, "SELECT feature_id, probe_id, activation, token, marked_text FROM smda.v_feature_examples WHERE rank = 1").to_pandas()
    top = query(wh, "SELECT feature_id, max(activation) AS best FROM smda.v_features WHERE position = 'user_max' "
                    "GROUP BY feature_id").to_pandas().set_index("feature_id")["best"]
    prompts = query(wh, "SELECT probe_id, prompt FROM smda.v_probe_scores").to_pandas().set_index("probe_id")["prompt"]
    ex = ex.set_index("feature_id")
    for f in named:
        row = ex.loc[f]
        assert row.activation == pytest.approx(top[f], rel=1e-12)  # the strongest activation over every probe's tokens
        assert f"«{row.token}»" in row.marked_text and row.token.lower() in prompts[row.probe_id].lower()
