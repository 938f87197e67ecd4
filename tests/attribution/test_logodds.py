"""Kind-free log-odds scores, their mechanism and calibrated interference, against independent computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from smda_core.attribution import logodds, mechanism
from smda_core.attribution.separation import separation_table
from smda_core.config import PolicySettings
from smda_core.policy.fit import fit_policy_arrays


def _world(seed: int = 0, n: int = 60, m: int = 7, K: int = 30):
    rng = np.random.default_rng(seed)
    harmful = rng.random(n) < 0.5
    category = np.where(harmful, rng.choice(["a", "b"], n), rng.choice(["c", "d"], n))
    feats = rng.random((n, K)) * (rng.random((n, K)) < 0.3)
    p = np.clip(rng.uniform(0.05, 0.95, n), 0, 1)
    dP = rng.normal(0, 1e-3, (m, n))
    pair_feats = rng.random((m, K)) * (rng.random((m, K)) < 0.3)
    return rng, harmful, category, feats, p, dP, pair_feats


def test_delta_logit_is_the_exact_difference_of_logits():
    _, _, _, _, p, dP, _ = _world()
    np.testing.assert_allclose(logodds.delta_logit(p, dP), logit(p[None] + dP) - logit(p)[None], rtol=1e-9, atol=1e-12)


def test_margin_local_worst_group_and_specific_equal_a_brute_force_computation():
    _, harmful, category, feats, p, dP, pair_feats = _world(m=14)
    dl = logodds.delta_logit(p, dP)
    nb = logodds.nearest_probes(pair_feats, feats, 10)
    groups = logodds.ProbeGroups.build(category, feats, np.arange(feats.shape[1]), min_size=8)
    split = logodds.ProbeGroups.build(category, feats, np.arange(feats.shape[1]), min_size=8, split=harmful)
    refuses = np.arange(len(dl)) < 10  # 10 refusing pairs (own push), 4 complying (too few: the overall push)
    got = logodds.logodds_scores(dl, harmful, nb, groups, split, refuses)
    s = np.where(harmful, 1.0, -1.0)
    np.testing.assert_allclose(got.values["margin_shift"], dl[:, harmful].mean(1) - dl[:, ~harmful].mean(1), rtol=1e-12)
    knn = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(feats)
    _, idx = knn.kneighbors(pair_feats)
    want_local = np.array([(s[idx[i]] * dl[i, idx[i]]).mean() for i in range(len(dl))])
    np.testing.assert_allclose(got.values["local_shift"], want_local, rtol=1e-12)
    masks = [category == c for c in sorted(set(category))]
    masks += [feats[:, j] > 0 for j in range(feats.shape[1]) if 8 <= (feats[:, j] > 0).sum() < len(feats)]
    want_worst = np.array([min((s[mk] * dl[i, mk]).mean() for mk in masks) for i in range(len(dl))])
    np.testing.assert_allclose(got.values["worst_group_shift"], want_worst, rtol=1e-12)
    assert got.values["specific_shift"] == pytest.approx(_specific_by_hand(dl * s, refuses, masks, harmful), rel=1e-9)
    want_harm = _harm_by_hand(want_local, got.values["specific_shift"], refuses)
    np.testing.assert_allclose(got.values["harm_shift"], want_harm, rtol=1e-9)
    for name, w in got.weights.items():  # every score is its weights applied to Δℓ
        np.testing.assert_allclose((w * dl).sum(1), got.values[name], rtol=1e-12)


def _specific_by_hand(signed, refuses, masks, harmful, min_size=8):
    """Per pair: least-squares residual of its signed shift on its response type's mean (fewer than 5 pairs of
    the type: the mean of all pairs), then the most negative mean over label-split groups of ≥ min_size probes."""
    halves = [mk & side for mk in masks for side in (harmful, ~harmful) if (mk & side).sum() >= min_size]
    out = []
    for i in range(len(signed)):
        same = refuses == refuses[i]
        mu = signed[same].mean(0) if same.sum() >= 5 else signed.mean(0)
        coef = np.linalg.lstsq(mu[:, None], signed[i], rcond=None)[0][0]
        resid = signed[i] - coef * mu
        out.append(min(resid[h].mean() for h in halves))
    return np.array(out)


def _harm_by_hand(local, specific, refuses):
    """Per pair: min over (local, specific) of the value over 1.4826 × MAD of that score among the pairs of
    the same response type (fewer than 5 such pairs: all pairs)."""
    out = []
    for i in range(len(local)):
        same = refuses == refuses[i]
        if same.sum() < 5:
            same = np.ones_like(same)
        scaled = []
        for v in (local, specific):
            ref = pd.Series(v[same])
            scaled.append(v[i] / (1.4826 * (ref - ref.median()).abs().median()))
        out.append(min(scaled))
    return np.array(out)


def test_harm_shift_takes_the_worse_of_local_and_specific_in_units_of_their_type_spread():
    """A pair harmful only near its own request and one harmful only elsewhere both rank lowest."""
    _, harmful, category, feats, p, dP, pair_feats = _world(seed=5, m=20)
    dl = logodds.delta_logit(p, dP)
    nb = logodds.nearest_probes(pair_feats, feats, 10)
    groups = logodds.ProbeGroups.build(category, feats, np.arange(feats.shape[1]), min_size=8)
    split = logodds.ProbeGroups.build(category, feats, np.arange(feats.shape[1]), min_size=8, split=harmful)
    s = np.where(harmful, 1.0, -1.0)
    dl[0, nb[0]] -= 0.05 * s[nb[0]]  # pair 0: harm on its own neighbours
    cat = category == "a"
    dl[1, cat] -= 0.05 * s[cat]  # pair 1: harm on one category, away from its own request
    refuses = np.arange(20) % 2 == 0
    got = logodds.logodds_scores(dl, harmful, nb, groups, split, refuses)
    np.testing.assert_allclose(got.values["harm_shift"],
                               _harm_by_hand(got.values["local_shift"], got.values["specific_shift"], refuses), rtol=1e-9)
    assert set(np.argsort(got.values["harm_shift"])[:2]) == {0, 1}


def test_keep_score_is_the_worse_of_harm_and_contradiction_as_robust_z_within_response_types():
    """Robust z (median, 1.4826·MAD) of each evidence within the pair's response type, counted with pandas; the
    contradiction's z counts only for pairs whose response contradicts the policy (consistency < 0)."""
    rng = np.random.default_rng(11)
    harm = rng.normal(1.0, 1.0, 30)
    consistency = rng.normal(0.2, 0.3, 30)
    refuses = np.arange(30) % 3 == 0  # 10 refusing pairs, 20 complying

    def robust_z(v):
        out = []
        for i in range(len(v)):
            same = pd.Series(v[refuses == refuses[i]])
            out.append((v[i] - same.median()) / (1.4826 * (same - same.median()).abs().median()))
        return np.array(out)

    got = logodds.keep_score(harm, consistency, refuses)
    hz, cz = robust_z(harm), robust_z(consistency)
    contradicts = consistency < 0
    np.testing.assert_allclose(got.values, np.where(contradicts, np.minimum(hz, cz), hz), rtol=1e-12)
    assert got.contradiction.tolist() == (contradicts & (cz < hz)).tolist()
    assert 0 < got.contradiction.sum() < 30  # both kinds of evidence decide some pairs here
    agreeing_lower = ~contradicts & (cz < hz)  # the policy agrees with them, less surely than with most pairs
    assert agreeing_lower.any() and not got.contradiction[agreeing_lower].any()


def test_consistency_parts_split_the_contradiction_exactly_over_the_policy_features():
    """(r·(b + Σ_j Z_j β_j − threshold) − centre)/scale with b, β from a sklearn ridge on the policy's own design."""
    rng, harmful, category, feats, p, _, _ = _world(seed=4)
    n, k, m = feats.shape[0], 5, 12
    X = rng.random((n, k)) + harmful[:, None] * rng.random(k)
    coo = np.nonzero(X)
    pol = fit_policy_arrays(coo[0], coo[1], X[coo], n, harmful=harmful, y=p, refused=p > 0.5, category=category,
                            settings=PolicySettings(selection="explicit", features=tuple(range(k)), lam=2.0))
    prompt_X = rng.random((m, k)) * 1.5
    refuses = rng.random(m) < 0.5
    centre, scale = rng.normal(0, 0.3, m), rng.uniform(0.5, 2.0, m)
    ridge = Ridge(alpha=2.0).fit(pol.Z, p)
    Zp = pol.design(prompt_X)
    r = np.where(refuses, 1.0, -1.0)
    want = Zp * ridge.coef_[None, :] * (r / scale)[:, None]
    score = (r * (ridge.intercept_ + Zp @ ridge.coef_ - pol.threshold) - centre) / scale
    parts = mechanism.consistency_parts(pol, prompt_X, refuses, centre, scale, score)
    np.testing.assert_allclose(parts.activation, want, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(parts.total.sum(1) + parts.intercept, score, rtol=1e-7, atol=1e-12)
    assert parts.completeness == pytest.approx(1.0)


def test_screen_consistency_is_positive_when_the_response_does_what_the_policy_expects():
    got = logodds.screen_consistency(np.array([1.0, 1.0, -1.0, -1.0]), 0.0, np.array([True, False, True, False]))
    assert got.tolist() == [1.0, -1.0, -1.0, 1.0]


def test_policy_parts_sum_to_the_refitted_log_odds_policy_change():
    """Σ_j (activation + weight) + intercept part = Σ_p W_p (ŷ'_p − ŷ_p) of a sklearn ridge refitted on (Z+ΔZ, ℓ+Δℓ)."""
    rng, harmful, category, feats, p, dP, _ = _world(seed=3)
    n, k = feats.shape[0], 5
    X = rng.random((n, k)) + harmful[:, None] * rng.random(k)
    coo = np.nonzero(X)
    pol = fit_policy_arrays(coo[0], coo[1], X[coo], n, harmful=harmful, y=np.log(p), refused=p > 0.5, category=category,
                            settings=PolicySettings(selection="explicit", features=tuple(range(k)), lam=2.0))
    dZ = rng.normal(0, 1e-2, (len(dP), n, k))
    dl = logodds.delta_logit(p, dP)
    lp = mechanism.logodds_policy(pol, p, dZ, dl)
    W = rng.normal(0, 1, (len(dP), n)) / n
    parts = mechanism.policy_parts(pol, lp, dZ, W, (W * dl).sum(1))
    ell = logit(p)
    base = Ridge(alpha=2.0).fit(pol.Z, ell)
    for i in range(len(dP)):
        moved = Ridge(alpha=2.0).fit(pol.Z + dZ[i], ell + dl[i])
        want = W[i] @ (moved.predict(pol.Z + dZ[i]) - base.predict(pol.Z))
        assert parts.total[i].sum() + parts.intercept[i] == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_harm_lands_on_the_planted_cue_not_on_the_feature_that_tells_harmful_from_harmless():
    """Pair 0 loses refusal on the harmful probes where a cue fires; a second feature fires on every harmful probe
    (it tells the labels apart) and correlates with that harm overall, but not within the harmful probes."""
    rng, harmful, category, feats, p, dP, _ = _world(seed=5, n=120, K=12)
    residual = rng.normal(0, 1e-4, (3, 120))
    cue, label = 4, 7
    feats[:, cue] = rng.random(120) * harmful * (rng.random(120) < 0.5) + 0.3 * rng.random(120) * (rng.random(120) < 0.2)
    feats[:, label] = harmful * (1.0 + 0.1 * rng.random(120))
    residual[0] -= 1e-2 * feats[:, cue] * harmful  # less refusal exactly where the cue fires on harmful requests
    landing = mechanism.harm_landing(residual, harmful, feats, min_active=3)
    assert np.argmax(landing[0]) == cue
    overall = [np.corrcoef(np.maximum(-residual[0] * np.where(harmful, 1, -1), 0), feats[:, j])[0, 1] for j in (cue, label)]
    assert overall[1] > 0.3  # the label feature does track the harm across all probes
    want = np.zeros(12)  # by hand: per label, harm times each feature's standardised activation
    harm = np.maximum(-np.where(harmful, 1.0, -1.0) * residual[0], 0)
    for side in (harmful, ~harmful):
        for j in range(12):
            x = feats[side, j]
            if x.std() > 0 and (x > 0).sum() >= 3:
                want[j] += harm[side] @ ((x - x.mean()) / x.std())
    np.testing.assert_allclose(landing[0], want / 120, rtol=1e-9, atol=1e-15)


def test_interference_flags_the_pair_whose_harm_lands_outside_its_neighbourhood():
    rng = np.random.default_rng(1)
    n, m, k = 80, 12, 15
    harmful = np.arange(n) % 2 == 0
    neighbours = np.stack([rng.permutation(n)[:k] for _ in range(m)])
    near = np.zeros((m, n), bool)
    for i in range(m):
        near[i, neighbours[i]] = True
    residual = rng.normal(0, 1e-3, (m, n)) * np.where(near, 1.0, 0.05)  # harm mostly within the neighbourhood
    residual[0, ~near[0] & harmful] -= 5e-2  # pair 0: less refusal on harmful probes outside it
    got = mechanism.interference(residual, harmful, neighbours, np.zeros(m, bool))
    assert got.flagged[0] and got.flagged.sum() == 1 and np.argmax(got.share) == 0
    # the share by hand: harm (less refusal on harmful, more on harmless) outside the neighbourhood over Σ|R|
    for i in range(m):
        harm = sum(max(0.0, (-1 if harmful[p] else 1) * residual[i, p]) for p in range(n) if not near[i, p])
        assert got.share[i] == pytest.approx(harm / np.abs(residual[i]).sum(), rel=1e-12)


def test_separation_table_equals_roc_auc_for_every_bad_kind():
    rng = np.random.default_rng(2)
    kinds = ["harmful_refusal"] * 20 + ["harmful_compliance"] * 5 + ["harmless_compliance"] * 20 + ["harmless_refusal"] * 4 + ["harmless_trigger"] * 3
    df = pd.DataFrame({"kind": kinds, "harmful": [k.startswith("harmful") for k in kinds], "score": rng.normal(size=len(kinds))})
    table = separation_table(df, scores=("score",)).set_index("bad_kind")
    for bad, good in (("harmful_compliance", "harmful_refusal"), ("harmless_refusal", "harmless_compliance"),
                      ("harmless_trigger", "harmless_compliance")):
        sub = df[df.kind.isin([bad, good])]
        assert table.loc[bad, "auc"] == pytest.approx(roc_auc_score(sub.kind == good, sub.score), abs=1e-3)
        assert table.loc[bad, "against"] == good


def test_a_small_probe_set_still_has_label_pure_groups_and_none_is_a_clear_error():
    from smda_core.errors import InputError

    category = np.repeat([f"c{i}" for i in range(12)], 3)  # 36 probes, 3 per category (the CI's real-model world)
    harmful = np.repeat(np.arange(12) < 6, 3)
    feats = np.zeros((36, 4))
    split = logodds.ProbeGroups.build(category, feats, np.arange(4), split=harmful)
    assert len(split.names) == 12 and split.masks.shape == (12, 36)  # each category is a group of 3
    assert len(logodds.ProbeGroups.build(np.repeat(["a", "b"], 225), np.zeros((450, 1)), np.arange(1),
                                         split=np.arange(450) < 225).names) == 2
    few = logodds.ProbeGroups.build(category[:6], feats[:6], np.arange(4), min_size=4, split=harmful[:6])
    assert few.masks.shape == (0, 6)
    with pytest.raises(InputError, match="large enough"):
        logodds.specific_weights(np.zeros((2, 6)), few, np.array([True, False]))
