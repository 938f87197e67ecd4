"""Attribution against brute-force ridge refits, finite differences and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from smda_core.attribution.scores import attribute_pairs
from smda_core.attribution.separation import bad_pair_auc
from smda_core.attribution.interference import count_active_flips, default_intended, interference
from smda_core.attribution.pathways import delta_beta_linear, delta_beta_refit
from smda_core.errors import ConfigError, InputError
from smda_core.config import PolicySettings
from smda_core.policy.fit import Policy, fit_policy_arrays

FEATURES = (3, 0, 5, 1, 4, 2)
VARIANTS = [("raw", False), ("raw", True), ("standardised", False), ("standardised", True)]


def make_policy(design: str, intercept: bool, n: int = 40, seed: int = 0) -> tuple[Policy, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(0.5, 1.0, size=(n, 6)), 0.0) * rng.uniform(0.5, 3.0, size=6)
    harmful = np.arange(n) % 2 == 0
    category = np.where(harmful, np.where(np.arange(n) % 4 == 0, "weapons", "drugs"), "benign")
    y = 0.3 + X @ rng.normal(size=6) + rng.normal(scale=0.3, size=n)
    pi, fi = np.nonzero(X)
    settings = PolicySettings(selection="explicit", features=FEATURES, design=design, intercept=intercept, lam=2.5)
    pol = fit_policy_arrays(pi, fi, X[pi, fi], n, harmful=harmful, y=y, refused=y > np.median(y), category=category, settings=settings)
    return pol, harmful, category


def beta_of(Z: np.ndarray, y: np.ndarray, lam: float, intercept: bool) -> np.ndarray:
    """Independent ridge: normal equations of [1, Z] with an unpenalised intercept."""
    if not intercept:
        return np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ y)
    A = np.column_stack([np.ones(len(y)), Z])
    P = lam * np.eye(A.shape[1])
    P[0, 0] = 0.0
    return np.linalg.solve(A.T @ A + P, A.T @ y)[1:]


def shifts(pol: Policy, m: int, scale: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dX = rng.normal(scale=scale, size=(m, pol.n, pol.k))
    dY = rng.normal(scale=scale, size=(m, pol.n))
    dP = rng.normal(scale=scale / 10, size=(m, pol.n))
    return dX, dY, dP


def design_shift(pol: Policy, dX: np.ndarray) -> np.ndarray:
    """ΔZ in design units, from the raw X independently of the standardiser."""
    if pol.settings.design == "raw":
        return dX
    std = pol.X.std(0)
    return dX / np.where(std > 0, std, 1.0)


@pytest.mark.parametrize("design,intercept", VARIANTS)
def test_refit_equals_brute_force_refits(design: str, intercept: bool) -> None:
    pol, _, _ = make_policy(design, intercept)
    dX, dY, _ = shifts(pol, 3, scale=0.2)
    split = delta_beta_refit(pol.Z, pol.fit, pol.shift(dX), dY)
    Z, y, lam = pol.Z, pol.y, pol.lam
    b0 = beta_of(Z, y, lam, intercept)
    for i in range(3):
        dZ = design_shift(pol, dX[i])
        total = beta_of(Z + dZ, y + dY[i], lam, intercept) - b0
        via_x = beta_of(Z + dZ, y, lam, intercept) - b0
        via_y = beta_of(Z, y + dY[i], lam, intercept) - b0
        np.testing.assert_allclose(split.total[i], total, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(split.via_x[i], via_x, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(split.via_y[i], via_y, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(split.via_xy[i], total - via_x - via_y, rtol=1e-6, atol=1e-10)
    one = delta_beta_refit(pol.Z, pol.fit, pol.shift(dX[0]), dY[0])
    np.testing.assert_allclose(one.total, split.total[0], rtol=1e-12)


@pytest.mark.parametrize("design,intercept", VARIANTS)
def test_linear_equals_central_finite_differences(design: str, intercept: bool) -> None:
    pol, _, _ = make_policy(design, intercept)
    dX, dY, _ = shifts(pol, 2, scale=1.0)
    lin = delta_beta_linear(pol.Z, pol.fit, pol.shift(dX), dY)
    Z, y, lam, eps = pol.Z, pol.y, pol.lam, 1e-5
    for i in range(2):
        dZ = design_shift(pol, dX[i])
        fd_x = (beta_of(Z + eps * dZ, y, lam, intercept) - beta_of(Z - eps * dZ, y, lam, intercept)) / (2 * eps)
        fd_y = (beta_of(Z, y + eps * dY[i], lam, intercept) - beta_of(Z, y - eps * dY[i], lam, intercept)) / (2 * eps)
        scale = np.abs(fd_x).max()
        np.testing.assert_allclose(lin.via_x[i], fd_x, rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(lin.via_y[i], fd_y, rtol=1e-5, atol=1e-6 * np.abs(fd_y).max())
        np.testing.assert_allclose(lin.total[i], fd_x + fd_y, rtol=1e-5, atol=1e-6 * scale)
        assert np.all(lin.via_xy[i] == 0.0)


@pytest.mark.parametrize("design,intercept", VARIANTS)
def test_refit_linear_gap_shrinks_with_step(design: str, intercept: bool) -> None:
    pol, _, _ = make_policy(design, intercept)
    dX, dY, _ = shifts(pol, 1, scale=1.0)
    gaps = []
    for eps in (1e-1, 1e-2, 1e-3, 1e-4):
        dZ = pol.shift(eps * dX)
        ref = delta_beta_refit(pol.Z, pol.fit, dZ, eps * dY).total
        lin = delta_beta_linear(pol.Z, pol.fit, dZ, eps * dY).total
        gaps.append(np.linalg.norm(ref - lin) / np.linalg.norm(lin))
    assert all(b < a / 5 for a, b in zip(gaps, gaps[1:])), gaps
    # via_y is exact in both methods (β is linear in y)
    ref = delta_beta_refit(pol.Z, pol.fit, pol.shift(dX), dY)
    lin = delta_beta_linear(pol.Z, pol.fit, pol.shift(dX), dY)
    np.testing.assert_allclose(ref.via_y, lin.via_y, rtol=1e-12, atol=1e-14)


def test_interference_hand_computation() -> None:
    fids = np.array([10, 11, 12, 13, 14])
    db = np.array([0.1, -0.5, 0.2, 0.0, 0.2])
    prompt_x = np.array([0.9, 0.0, 0.3, 0.5, 0.0])
    intended = default_intended(prompt_x, fids, top=3)
    assert intended == [10, 13, 12]
    s = interference(db, fids, intended)
    assert s.dominant_feature == 11
    assert s.dominant_share == pytest.approx(0.5)
    assert s.interference == pytest.approx(1 - 0.3)
    assert s.flagged
    s2 = interference(db, fids, [11, 99])
    assert (s2.interference, s2.flagged) == (pytest.approx(0.5), False)
    assert default_intended(np.array([0.0, 0.2, 0.0, 0.0, 0.0]), fids) == [11]
    zero = interference(np.zeros(5), fids, [10])
    assert np.isnan(zero.interference) and not zero.flagged


@pytest.mark.parametrize("design,intercept", [("raw", False), ("standardised", True)])
def test_attribute_pairs_tables(design: str, intercept: bool) -> None:
    pol, harmful, category = make_policy(design, intercept)
    m, n, k = 4, pol.n, pol.k
    dX, dY, dP = shifts(pol, m, scale=0.3)
    prompt_X = np.random.default_rng(5).normal(size=(m, k))
    ids = np.array(["p0", "p1", "p2", "p3"])
    intended = [None, [int(pol.feature_ids[0])], None, []]
    res = attribute_pairs(
        pol, ids, dX, dY, dP, pair_prompt_X=prompt_X, probe_harmful=harmful, probe_category=category, intended=intended
    )

    # pair_attribution: pair × method × feature, contribution = Δβ·β
    pa = res.pair_attribution
    assert set(pa) == {"pair_id", "feature_id", "method", "delta_beta", "via_x", "via_y", "via_xy", "contribution"}
    assert len(pa["pair_id"]) == m * 2 * k
    b0 = beta_of(pol.Z, pol.y, pol.lam, intercept)
    for i in range(m):
        dZ = design_shift(pol, dX[i])
        total = beta_of(pol.Z + dZ, pol.y + dY[i], pol.lam, intercept) - b0
        rows = (pa["pair_id"] == ids[i]) & (pa["method"] == "refit")
        np.testing.assert_array_equal(pa["feature_id"][rows], pol.feature_ids)
        np.testing.assert_allclose(pa["delta_beta"][rows], total, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(pa["contribution"][rows], total * b0, rtol=1e-6, atol=1e-10)

    # pair_summary
    ps = res.pair_summary
    refit_total = res.splits["refit"].total
    np.testing.assert_allclose(ps["alignment"], refit_total @ b0, rtol=1e-6)
    np.testing.assert_allclose(ps["alignment_refit"], ps["alignment"])
    np.testing.assert_allclose(ps["alignment_linear"], res.splits["linear"].total @ b0, rtol=1e-6)
    for i in range(m):
        p_h = dP[i][harmful].mean()
        p_nh = dP[i][~harmful].mean()
        assert ps["correctness_shift"][i] == pytest.approx(0.5 * (p_h - p_nh))
        assert ps["dy_harmful"][i] == pytest.approx(dY[i][harmful].mean())
        assert ps["dy_harmless"][i] == pytest.approx(dY[i][~harmful].mean())
        flips = sum(int((pol.X[a, j] > 0) != (pol.X[a, j] + dX[i, a, j] > 0)) for a in range(n) for j in range(k))
        assert ps["active_flips"][i] == flips
        a = np.abs(refit_total[i])
        want_intended = intended[i] if intended[i] is not None else [int(pol.feature_ids[j]) for j in np.argsort(-prompt_X[i])[:3] if prompt_X[i, j] > 0]
        assert ps["intended_features"][i] == want_intended
        in_mask = np.isin(pol.feature_ids, want_intended)
        assert ps["dominant_feature"][i] == pol.feature_ids[np.argmax(a)]
        assert ps["dominant_share"][i] == pytest.approx(a.max() / a.sum())
        assert ps["interference_legacy"][i] == pytest.approx(1 - a[in_mask].sum() / a.sum())
        assert ps["flagged_legacy"][i] == (pol.feature_ids[np.argmax(a)] not in want_intended)
    assert ps["interference_legacy"][3] == pytest.approx(1.0) and ps["flagged_legacy"][3]

    # group effects
    ge = res.pair_group_effects
    groups = ["harmful", "harmless", "category:benign", "category:drugs", "category:weapons"]
    assert len(ge["pair_id"]) == m * len(groups) * k
    dZ2 = design_shift(pol, dX[2])
    for g in groups:
        mask = harmful if g == "harmful" else ~harmful if g == "harmless" else category == g.split(":")[1]
        rows = (ge["pair_id"] == "p2") & (ge["group"] == g)
        np.testing.assert_allclose(ge["activation_part"][rows], dZ2[mask].mean(0) * b0, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ge["weight_part"][rows], pol.Z[mask].mean(0) * refit_total[2], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ge["dy"][rows], dY[2][mask].mean())
    gs = res.pair_group_shift
    assert gs["n_probes"][: len(groups)].tolist() == [harmful.sum(), (~harmful).sum(), (category == "benign").sum(), (category == "drugs").sum(), (category == "weapons").sum()]

    tables = res.to_arrow()
    assert tables["pair_summary"].num_rows == m
    assert tables["pair_summary"].column("intended_features").to_pylist()[1] == intended[1]
    assert tables["pair_attribution"].num_rows == m * 2 * k


def test_attribute_pairs_primary_linear_and_given_flips() -> None:
    pol, harmful, category = make_policy("raw", False)
    dX, dY, dP = shifts(pol, 2, scale=0.1)
    res = attribute_pairs(
        pol, [7, 8], dX, dY, dP, pair_prompt_X=np.ones((2, pol.k)), probe_harmful=harmful, probe_category=category,
        active_flips=[5, 0], methods=("linear",), primary="linear",
    )
    assert res.pair_summary["active_flips"].tolist() == [5, 0]
    assert np.all(np.isnan(res.pair_summary["alignment_refit"]))
    np.testing.assert_allclose(res.pair_summary["alignment"], res.splits["linear"].total @ pol.coef)
    assert set(res.pair_attribution["method"]) == {"linear"}
    with pytest.raises(ConfigError, match="primary"):
        attribute_pairs(pol, [7, 8], dX, dY, dP, pair_prompt_X=np.ones((2, pol.k)), probe_harmful=harmful, probe_category=category, methods=("linear",))
    with pytest.raises(InputError, match="dY"):
        attribute_pairs(pol, [7, 8], dX, dY[:, :3], dP, pair_prompt_X=np.ones((2, pol.k)), probe_harmful=harmful, probe_category=category)


def test_count_active_flips() -> None:
    base = np.array([[0.0, 1.0], [2.0, 0.0]])
    shifted = np.array([[[0.5, 1.0], [0.0, 0.0]], [[0.0, 1.0], [2.0, 0.0]]])
    assert count_active_flips(base, shifted[0]) == 2
    assert count_active_flips(base, shifted).tolist() == [2, 0]


def test_bad_pair_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=80), 1)
    bad = rng.random(80) < 0.3
    assert bad_pair_auc(scores, bad) == pytest.approx(roc_auc_score(bad, scores))
    assert bad_pair_auc([1.0, 1.0], [True, False]) == 0.5
    assert np.isnan(bad_pair_auc([1.0, 2.0], [False, False]))
