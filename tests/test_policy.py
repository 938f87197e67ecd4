"""The symbolic policy against dense brute-force computations and scikit-learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from smda_core.errors import ConfigError, InputError
from smda_core.config import PolicySettings
from smda_core.policy.fit import best_threshold, fit_policy_arrays, stratified_split
from smda_core.policy.design import Standardiser, design_matrix
from smda_core.policy.formula import render_formula
from smda_core.policy.selection import select_features


def to_coo(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pi, fi = np.nonzero(X)
    return pi, fi, X[pi, fi]


def sparse_world(n: int = 150, d: int = 400, seed: int = 0):
    """Random sparse non-negative activations with a few features planted on harmful probes."""
    rng = np.random.default_rng(seed)
    harmful = rng.random(n) < 0.5
    X = np.where(rng.random((n, d)) < 0.05, rng.exponential(0.5, size=(n, d)), 0.0)
    planted = [7, 42, 99, 250]
    for j, scale in zip(planted, [1.0, 0.6, -0.8, 0.3]):
        on = harmful if scale > 0 else ~harmful
        X[:, j] = np.where(on & (rng.random(n) < 0.8), abs(scale) + rng.random(n) * 0.1, 0.0)
    y = X[:, 7] - 0.5 * X[:, 99] + 0.3 * X[:, 3] + rng.normal(scale=0.2, size=n)
    return X, harmful, y


def test_contrast_selection_equals_dense_brute_force() -> None:
    X, harmful, y = sparse_world()
    contrast = X[harmful].mean(0) - X[~harmful].mean(0)
    expected = [j for j in sorted(range(X.shape[1]), key=lambda j: (-abs(contrast[j]), j)) if abs(contrast[j]) > 0.1]
    sel = select_features(*to_coo(X), X.shape[0], harmful=harmful, method="contrast", threshold=0.1)
    assert sel.feature_ids.tolist() == expected
    np.testing.assert_allclose(sel.statistic, contrast[expected], rtol=1e-12)
    top = select_features(*to_coo(X), X.shape[0], harmful=harmful, method="contrast", threshold=0.1, max_features=2)
    assert top.feature_ids.tolist() == expected[:2]


@pytest.mark.parametrize("min_active", [1, 5, 12])
def test_correlation_selection_equals_dense_corrcoef(min_active: int) -> None:
    X, harmful, y = sparse_world(seed=1)
    r = np.zeros(X.shape[1])
    eligible = []
    for j in range(X.shape[1]):
        if (X[:, j] != 0).sum() >= min_active and X[:, j].std() > 0:
            r[j] = np.corrcoef(X[:, j], y)[0, 1]
            eligible.append(j)
    expected = sorted(eligible, key=lambda j: (-abs(r[j]), j))[:10]
    sel = select_features(*to_coo(X), X.shape[0], harmful=harmful, y=y, method="correlation", k=10, min_active=min_active)
    assert sel.feature_ids.tolist() == expected
    np.testing.assert_allclose(sel.statistic, r[expected], rtol=1e-9)
    assert sel.statistic_name == "pearson_r"


def test_explicit_selection_keeps_given_order() -> None:
    X, harmful, _ = sparse_world()
    sel = select_features(*to_coo(X), X.shape[0], harmful=harmful, method="explicit", features=[99, 3, 500])
    assert sel.feature_ids.tolist() == [99, 3, 500]
    contrast99 = X[harmful, 99].mean() - X[~harmful, 99].mean()
    assert sel.statistic[0] == pytest.approx(contrast99)
    assert sel.statistic[2] == 0.0  # never active


def test_design_matrix_equals_dense_columns() -> None:
    X, _, _ = sparse_world()
    ids = [250, 0, 7, 399]
    np.testing.assert_array_equal(design_matrix(*to_coo(X), ids, X.shape[0]), X[:, ids])


def test_duplicate_coo_entries_are_rejected() -> None:
    with pytest.raises(InputError, match="more than once"):
        design_matrix(np.array([0, 0]), np.array([1, 1]), np.array([1.0, 2.0]), [1], 2)
    with pytest.raises(InputError):
        design_matrix(np.array([0, 5]), np.array([1, 2]), np.array([1.0, 2.0]), [1], 2)


def test_standardiser_units() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)) * [1.0, 4.0, 0.0] + [0.0, 2.0, 5.0]
    st = Standardiser.fit(X)
    np.testing.assert_allclose(st.mean, X.mean(0))
    np.testing.assert_allclose(st.std, [X[:, 0].std(), X[:, 1].std(), 1.0])
    Z = st.transform(X)
    np.testing.assert_allclose(Z[:, :2].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z[:, :2].std(0), 1.0)
    dX = rng.normal(size=X.shape)
    np.testing.assert_allclose(st.transform(X + dX) - Z, st.scale_shift(dX), atol=1e-12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.mean = np.zeros(3)  # type: ignore[misc]


def test_settings_validate_and_presets() -> None:
    with pytest.raises(ConfigError, match="selection"):
        PolicySettings(selection="magic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="design"):
        PolicySettings(design="whitened")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lam"):
        PolicySettings(lam=-1.0)
    with pytest.raises(ConfigError, match="features"):
        PolicySettings(selection="explicit")
    with pytest.raises(ConfigError, match="heldout_fraction"):
        PolicySettings.preset("default").replace(heldout_fraction=1.5)
    p = PolicySettings.preset("paper")
    assert (p.selection, p.contrast_threshold, p.design, p.intercept, p.lam, p.max_features) == ("contrast", 0.1, "raw", False, 5.0, None)
    d = PolicySettings.preset("default")
    assert (d.selection, d.contrast_threshold, d.design, d.intercept, d.lam, d.max_features) == ("contrast", 0.1, "standardised", True, None, 64)
    assert PolicySettings.preset("paper", lam=2.0).lam == 2.0


def test_stratified_split_is_stratified_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    category = rng.choice(["a", "b", "c", "d"], size=300)
    refused = rng.random(300) < 0.4
    s1 = stratified_split(category, refused, 0.2, seed=3)
    s2 = stratified_split(category, refused, 0.2, seed=3)
    s3 = stratified_split(category, refused, 0.2, seed=4)
    np.testing.assert_array_equal(s1.test, s2.test)
    assert not np.array_equal(s1.test, s3.test)
    for c in "abcd":
        for r in (True, False):
            members = (category == c) & (refused == r)
            assert s1.test[members].sum() == int(np.floor(0.2 * members.sum() + 0.5))


def test_best_threshold_maximises_accuracy_by_brute_force() -> None:
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=60), 1)  # ties on purpose
    label = score + rng.normal(scale=0.8, size=60) > 0.2
    t, acc = best_threshold(score, label)
    candidates = np.concatenate([[score.min() - 1], np.unique(score)[:-1] + 1e-9, [score.max() + 1]])
    best = max(np.mean((score > c) == label) for c in candidates)
    assert acc == pytest.approx(best)
    assert np.mean((score > t) == label) == pytest.approx(acc)


def policy_world(n: int = 200, seed: int = 0):
    X, harmful, _ = sparse_world(n=n, d=300, seed=seed)
    rng = np.random.default_rng(seed + 10)
    y = -2.0 + 1.5 * X[:, 7] + 1.0 * X[:, 42] - 1.2 * X[:, 99] + rng.normal(scale=0.15, size=n)
    refused = y > np.quantile(y, 0.55)
    category = np.where(harmful, rng.choice(["weapons", "drugs"], size=n), "benign")
    return X, harmful, y, refused, category


@pytest.mark.parametrize("preset", ["paper", "default"])
def test_fit_policy_matches_sklearn_and_beats_baseline(preset: str) -> None:
    X, harmful, y, refused, category = policy_world()
    settings = PolicySettings.preset(preset) if preset == "paper" else PolicySettings.preset("default", max_features=8)
    pol = fit_policy_arrays(*to_coo(X), X.shape[0], harmful=harmful, y=y, refused=refused, category=category, settings=settings)
    Xs = X[:, pol.feature_ids]
    np.testing.assert_array_equal(pol.X, Xs)
    Z = Xs if preset == "paper" else (Xs - Xs.mean(0)) / np.where(Xs.std(0) > 0, Xs.std(0), 1.0)
    np.testing.assert_allclose(pol.Z, Z, atol=1e-12)
    sk = Ridge(alpha=pol.lam, fit_intercept=settings.intercept, solver="svd").fit(Z, y)
    np.testing.assert_allclose(pol.coef, sk.coef_, rtol=1e-6, atol=1e-12)
    assert pol.r2 == pytest.approx(sk.score(Z, y))
    np.testing.assert_allclose(pol.predict(Xs), sk.predict(Z), atol=1e-10)
    assert (pol.n, pol.k) == Z.shape
    if preset == "paper":
        assert pol.lam == 5.0 and pol.intercept == 0.0

    # held-out report, recomputed independently from the stored split and threshold
    test = pol.heldout
    train = ~test
    sk_train = Ridge(alpha=pol.lam, fit_intercept=settings.intercept, solver="svd").fit(Z[train], y[train])
    assert pol.accuracy == pytest.approx(np.mean((sk_train.predict(Z[test]) > pol.threshold) == refused[test]))
    majority = refused[train].mean() >= 0.5
    assert pol.majority_baseline == pytest.approx(np.mean(refused[test] == majority))
    assert pol.accuracy >= pol.majority_baseline
    assert pol.accuracy > 0.8
    np.testing.assert_array_equal(pol.heldout, stratified_split(category, refused, 0.2, 0).test)


def test_loo_r2_at_fixed_lambda_equals_explicit_refits() -> None:
    X, harmful, y, refused, category = policy_world(n=80, seed=2)
    settings = PolicySettings.preset("default", lam=1.5, max_features=6)
    pol = fit_policy_arrays(*to_coo(X), X.shape[0], harmful=harmful, y=y, refused=refused, category=category, settings=settings)
    Z = pol.Z
    pred = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        pred[i] = Ridge(alpha=1.5, solver="svd").fit(Z[keep], y[keep]).predict(Z[i : i + 1])[0]
    assert pol.loo_r2 == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-8)


def test_render_formula_sorted_by_abs_coef_with_labels() -> None:
    rng = np.random.default_rng(0)
    n = 60
    X = np.zeros((n, 10))
    X[:, 2] = rng.random(n)
    X[:, 5] = rng.random(n)
    harmful = np.arange(n) % 2 == 0
    y = 0.5 + 2.0 * X[:, 2] - 4.0 * X[:, 5]
    settings = PolicySettings(selection="explicit", features=(2, 5), design="raw", intercept=True, lam=1e-10)
    pol = fit_policy_arrays(*to_coo(X), n, harmful=harmful, y=y, refused=y > 0, category=np.array(["c"] * n), settings=settings)
    text = render_formula(pol, {2: "weapons instructions"}, behaviour_name="refusal")
    assert text == "refusal ≈ 0.5 − 4·[feature 5] + 2·[weapons instructions]"
    assert render_formula(pol, {}, top=1) == "refusal ≈ 0.5 − 4·[feature 5] …"


def _fit(X, harmful, y, refused=None, **settings):
    n = X.shape[0]
    refused = harmful if refused is None else refused
    return fit_policy_arrays(*to_coo(X), n, harmful=harmful, y=y, refused=refused,
                             category=np.where(harmful, "bad", "good"), settings=PolicySettings(**settings))


def test_fit_warnings_name_k_at_least_n_lambda_at_the_grid_edge_and_no_gain_over_the_majority() -> None:
    X, harmful, y = sparse_world(n=150)
    sound = _fit(X, harmful, y, max_features=8)
    assert sound.warnings == ()

    wide = _fit(X[:40], harmful[:40], y[:40], contrast_threshold=0.0)  # every feature with any contrast: k ≥ n
    assert wide.k >= wide.n == 40
    assert any(w.startswith(f"k={wide.k} policy features for n=40 probes") and "policy.max_features" in w
               for w in wide.warnings), wide.warnings

    grid = (10.0, 100.0, 1000.0)  # the LOO optimum of this design lies below the grid
    edge = _fit(X, harmful, y, max_features=8, lam_grid=grid)
    errors = [np.mean((y - _loo_predictions(edge.Z, y, lam)) ** 2) for lam in grid]  # explicit LOO, independently
    assert edge.lam == grid[int(np.argmin(errors))] == grid[0]
    assert any("smallest value of the grid" in w and "policy.lam_grid" in w for w in edge.warnings), edge.warnings

    always = _fit(X, harmful, y, max_features=8, refused=np.ones_like(harmful))  # everyone refused: baseline 1.0
    assert always.majority_baseline == 1.0
    assert any("does not beat the majority baseline 1.000" in w for w in always.warnings), always.warnings


def _loo_predictions(Z, y, lam):
    out = np.empty_like(y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        model = Ridge(alpha=lam, fit_intercept=True).fit(Z[keep], y[keep])
        out[i] = model.predict(Z[i:i + 1])[0]
    return out


def test_a_constant_behaviour_and_one_sided_labels_get_a_hint_that_can_help() -> None:
    X, harmful, y = sparse_world(n=60)
    with pytest.raises(InputError, match="same on all 60 probes.*behaviour.refusal_openings") as err:
        _fit(X, harmful, np.full(60, -3.0))
    assert "contrast_threshold" not in str(err.value)
    with pytest.raises(InputError, match="all 60 probes are labelled harmful=True.*data.probes"):
        _fit(X, np.ones(60, dtype=bool), y)
    with pytest.raises(InputError, match=r"the largest is 0.*contrast_threshold below"):
        _fit(X, harmful, y, contrast_threshold=50.0)
    flat = np.ones((60, 5))  # features that do not differ at all between harmful and harmless probes
    with pytest.raises(InputError, match="every contrast is 0.*features.position"):
        _fit(flat, harmful, y)
