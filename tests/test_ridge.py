"""The closed-form ridge against independent math: scikit-learn, normal equations, explicit refits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score

from smda_core.errors import InputError
from smda_core.policy.ridge import default_lambda_grid, fit_ridge, loo_ridge, r2

SHAPES = [(60, 7), (12, 25)]  # n > k and n < k


def make_data(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, k)) * rng.uniform(0.5, 3.0, size=k) + rng.normal(size=k)
    y = 1.5 + Z[:, : min(3, k)] @ np.array([1.0, -2.0, 0.5][: min(3, k)]) + rng.normal(scale=0.7, size=n)
    return Z, y


def augmented_solve(Z: np.ndarray, y: np.ndarray, lam: float, intercept: bool) -> tuple[np.ndarray, float]:
    """Ridge by the normal equations of [1, Z] with the intercept unpenalised (no centring)."""
    if not intercept:
        return np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ y), 0.0
    A = np.column_stack([np.ones(len(y)), Z])
    P = lam * np.eye(A.shape[1])
    P[0, 0] = 0.0
    w = np.linalg.solve(A.T @ A + P, A.T @ y)
    return w[1:], float(w[0])


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("intercept", [True, False])
def test_fit_ridge_matches_sklearn_and_normal_equations(n: int, k: int, intercept: bool) -> None:
    Z, y = make_data(n, k)
    lam = 3.7
    fit = fit_ridge(Z, y, lam, intercept)
    sk = Ridge(alpha=lam, fit_intercept=intercept, solver="svd").fit(Z, y)
    np.testing.assert_allclose(fit.coef, sk.coef_, rtol=1e-6, atol=1e-12)
    assert fit.intercept == pytest.approx(float(sk.intercept_), rel=1e-6, abs=1e-12)
    coef, b = augmented_solve(Z, y, lam, intercept)
    np.testing.assert_allclose(fit.coef, coef, rtol=1e-6, atol=1e-12)
    assert fit.intercept == pytest.approx(b, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("intercept", [True, False])
def test_fit_ridge_exposes_inverse_and_residual(intercept: bool) -> None:
    Z, y = make_data(40, 5)
    fit = fit_ridge(Z, y, 2.0, intercept)
    Zc = Z - Z.mean(0) if intercept else Z
    np.testing.assert_allclose(fit.m_inv, np.linalg.inv(Zc.T @ Zc + 2.0 * np.eye(5)), rtol=1e-10)
    np.testing.assert_allclose(fit.residual, y - fit.predict(Z), atol=1e-10)
    np.testing.assert_allclose(fit.z_mean, Z.mean(0) if intercept else np.zeros(5))
    assert fit.y_mean == pytest.approx(y.mean() if intercept else 0.0)
    assert not fit.coef.flags.writeable


def test_fit_ridge_vstacked_rows_equal_doubled_lambda() -> None:
    Z, y = make_data(30, 6)
    once = fit_ridge(Z, y, 1.3, True)
    twice = fit_ridge(np.vstack([Z, Z]), np.concatenate([y, y]), 2.6, True)
    np.testing.assert_allclose(once.coef, twice.coef, rtol=1e-10)
    assert once.intercept == pytest.approx(twice.intercept, rel=1e-10)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("intercept", [True, False])
def test_loo_lambda_and_errors_match_ridgecv(n: int, k: int, intercept: bool) -> None:
    Z, y = make_data(n, k, seed=1)
    grid = default_lambda_grid()
    loo = loo_ridge(Z, y, grid, intercept)
    cv = RidgeCV(alphas=grid, fit_intercept=intercept, store_cv_results=True).fit(Z, y)
    assert loo.lam == pytest.approx(cv.alpha_)
    np.testing.assert_allclose(loo.mse, cv.cv_results_.mean(axis=0), rtol=1e-6)
    fit = fit_ridge(Z, y, loo.lam, intercept)
    np.testing.assert_allclose(fit.coef, cv.coef_, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("intercept", [True, False])
def test_loo_residuals_equal_explicit_refits(n: int, k: int, intercept: bool) -> None:
    Z, y = make_data(n, k, seed=2)
    lam = 0.8
    loo = loo_ridge(Z, y, [lam], intercept)
    brute = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        coef, b = augmented_solve(Z[keep], y[keep], lam, intercept)
        brute[i] = y[i] - (b + Z[i] @ coef)
    np.testing.assert_allclose(loo.loo_residual, brute, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(loo.loo_pred, y - brute, rtol=1e-8, atol=1e-10)
    assert loo.lam == lam


def test_loo_picks_smallest_error_of_grid() -> None:
    Z, y = make_data(50, 4, seed=3)
    grid = [0.01, 1.0, 100.0]
    loo = loo_ridge(Z, y, grid, True)
    singles = [loo_ridge(Z, y, [g], True).mse[0] for g in grid]
    np.testing.assert_allclose(loo.mse, singles, rtol=1e-12)
    assert loo.lam == grid[int(np.argmin(singles))]


def test_r2_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=30), rng.normal(size=30)
    assert r2(y, pred) == pytest.approx(r2_score(y, pred))
    assert np.isnan(r2(np.ones(4), np.zeros(4)))


def test_default_grid_is_positive_increasing_log_grid() -> None:
    g = default_lambda_grid()
    assert g[0] == pytest.approx(1e-3) and g[-1] == pytest.approx(1e5) and np.all(np.diff(np.log10(g)) > 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: fit_ridge(np.ones(5), np.ones(5), 1.0, True),
        lambda: fit_ridge(np.ones((5, 2)), np.ones(4), 1.0, True),
        lambda: fit_ridge(np.ones((5, 2)), np.ones(5), -1.0, True),
        lambda: fit_ridge(np.full((5, 2), np.nan), np.ones(5), 1.0, True),
        lambda: loo_ridge(np.ones((5, 2)), np.ones(5), [], True),
    ],
)
def test_bad_arguments_raise_input_error(call) -> None:
    with pytest.raises(InputError):
        call()
