"""Closed-form ridge regression and its exact leave-one-out, the solver under the symbolic policy.

Everything here is plain numpy on float64 arrays, so the policy and the attribution can be
checked against independent math (scikit-learn, explicit refits) without a model in sight.

Objective (DESIGN §3)::

    minimise_{b, β}  ‖y − b·1 − Zβ‖² + λ‖β‖²        (b = 0 when intercept=False)

The intercept is unpenalised, so it is solved by centring the columns of Z and y:
``β = (ZcᵀZc + λI)⁻¹ Zcᵀ yc`` and ``b = ȳ − z̄ᵀβ``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smda_core.errors import InputError

__all__ = ["RidgeFit", "LooResult", "fit_ridge", "loo_ridge", "default_lambda_grid", "r2"]


def _frozen(a: np.ndarray) -> np.ndarray:
    """Mark an array read-only so a frozen result cannot be changed behind its back."""
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class RidgeFit:
    """One ridge solution plus what the attribution needs to differentiate it.

    Attributes:
        coef: β, shape (k,).
        intercept: b (0.0 when fitted without one).
        lam: λ.
        fit_intercept: whether b was fitted.
        z_mean: column means z̄ used for centring, (k,) (zeros without intercept).
        y_mean: ȳ (0.0 without intercept).
        m_inv: (ZcᵀZc + λI)⁻¹, (k, k).
        residual: r = yc − Zc β, (n,) (centred residual; equals y − b − Zβ).
    """

    coef: np.ndarray
    intercept: float
    lam: float
    fit_intercept: bool
    z_mean: np.ndarray
    y_mean: float
    m_inv: np.ndarray
    residual: np.ndarray

    @property
    def k(self) -> int:
        return int(self.coef.shape[0])

    def predict(self, Z: np.ndarray) -> np.ndarray:
        """b + Zβ for a design matrix in the same units as the fit, (n, k) → (n,)."""
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] != self.k:
            raise InputError(f"design matrix must have shape (n, {self.k}); got {Z.shape}", field="Z")
        return self.intercept + Z @ self.coef


@dataclass(frozen=True, eq=False)
class LooResult:
    """Exact leave-one-out errors over a λ grid, from one SVD.

    Attributes:
        lam: the λ with the smallest LOO mean squared error (first one on ties).
        lam_grid: the grid, (g,).
        mse: LOO mean squared error per λ, (g,).
        loo_residual: y_i − ŷ_{(−i)} at the chosen λ, (n,).
        loo_pred: ŷ_{(−i)}, the prediction for row i by the fit without row i, (n,).
        leverage: H_ii at the chosen λ (intercept's 1/n included), (n,).
    """

    lam: float
    lam_grid: np.ndarray
    mse: np.ndarray
    loo_residual: np.ndarray
    loo_pred: np.ndarray
    leverage: np.ndarray


def default_lambda_grid() -> np.ndarray:
    """41 values, 5 per decade from 1e-3 to 1e5: wide enough for raw and standardised designs."""
    return np.logspace(-3, 5, 41)


def _check_xy(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if Z.ndim != 2:
        raise InputError(f"Z must be 2-D (n, k); got shape {Z.shape}", field="Z")
    if y.ndim != 1 or y.shape[0] != Z.shape[0]:
        raise InputError(f"y must have shape ({Z.shape[0]},); got {y.shape}", field="y")
    if Z.shape[0] < 2:
        raise InputError(f"need at least 2 rows to fit a ridge; got {Z.shape[0]}", field="Z")
    if Z.shape[1] < 1:
        raise InputError("Z has no columns: select at least one feature", field="Z")
    if not (np.all(np.isfinite(Z)) and np.all(np.isfinite(y))):
        raise InputError("Z and y must be finite (no NaN or inf)", field="Z")
    return Z, y


def _check_lam(lam: float, field: str = "lam") -> float:
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise InputError(f"λ must be a finite number ≥ 0; got {lam}", field=field)
    return lam


def _centre(Z: np.ndarray, y: np.ndarray, intercept: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    if intercept:
        z_mean = Z.mean(axis=0)
        y_mean = float(y.mean())
        return Z - z_mean, y - y_mean, z_mean, y_mean
    return Z, y, np.zeros(Z.shape[1]), 0.0


def fit_ridge(Z: np.ndarray, y: np.ndarray, lam: float, intercept: bool) -> RidgeFit:
    """Solve the ridge normal equations on (centred) Z and y.

    Args:
        Z: design matrix, (n, k), float64.
        y: behaviour, (n,).
        lam: λ ≥ 0 (0 only when ZcᵀZc is invertible).
        intercept: fit an unpenalised intercept (centre Z and y first).

    Returns:
        RidgeFit with β, b, (ZcᵀZc + λI)⁻¹ and the residual.
    """
    Z, y = _check_xy(Z, y)
    lam = _check_lam(lam)
    Zc, yc, z_mean, y_mean = _centre(Z, y, intercept)
    k = Z.shape[1]
    M = Zc.T @ Zc + lam * np.eye(k)
    try:
        m_inv = np.linalg.solve(M, np.eye(k))
    except np.linalg.LinAlgError as exc:
        raise InputError(f"ZᵀZ + λI is singular at λ={lam}: use λ > 0", field="lam") from exc
    m_inv = 0.5 * (m_inv + m_inv.T)
    coef = np.linalg.solve(M, Zc.T @ yc)
    residual = yc - Zc @ coef
    b = float(y_mean - z_mean @ coef) if intercept else 0.0
    return RidgeFit(
        coef=_frozen(coef),
        intercept=b,
        lam=lam,
        fit_intercept=bool(intercept),
        z_mean=_frozen(z_mean),
        y_mean=y_mean,
        m_inv=_frozen(m_inv),
        residual=_frozen(residual),
    )


def loo_ridge(Z: np.ndarray, y: np.ndarray, lam_grid: Sequence[float] | np.ndarray | None, intercept: bool) -> LooResult:
    """Exact leave-one-out error of the ridge for every λ of a grid, from one thin SVD of Zc.

    With Zc = U diag(s) Vᵀ, the hat matrix is ``H = (1/n)11ᵀ + U diag(s²/(s²+λ)) Uᵀ`` (the first
    term only with an intercept, which is unpenalised and therefore costs leverage 1/n), and the
    LOO residual of row i is ``e_i / (1 − H_ii)``: no refits. Works for n < k and n > k.

    Args:
        Z: (n, k). y: (n,). lam_grid: λ values ≥ 0 (None → `default_lambda_grid()`).
        intercept: as in `fit_ridge`.
    """
    Z, y = _check_xy(Z, y)
    grid = default_lambda_grid() if lam_grid is None else np.asarray(lam_grid, dtype=np.float64).ravel()
    if grid.size == 0:
        raise InputError("the λ grid is empty", field="lam_grid")
    for v in grid:
        _check_lam(v, field="lam_grid")
    n = Z.shape[0]
    Zc, yc, _, _ = _centre(Z, y, intercept)
    U, s, _ = np.linalg.svd(Zc, full_matrices=False)
    # Directions with (numerically) zero singular value carry no fit at any λ > 0.
    keep = s > s.max(initial=0.0) * max(Zc.shape) * np.finfo(np.float64).eps
    U, s2 = U[:, keep], s[keep] ** 2
    uty = U.T @ yc  # (r,)
    U2 = U**2  # (n, r)
    base_h = 1.0 / n if intercept else 0.0

    shrink = s2[None, :] / (s2[None, :] + grid[:, None])  # (g, r)
    fitted = (shrink * uty[None, :]) @ U.T  # (g, n): Zc β(λ)
    resid = yc[None, :] - fitted  # (g, n): y − ŷ
    lev = base_h + shrink @ U2.T  # (g, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = resid / (1.0 - lev)
    loo = np.where(lev < 1.0 - 1e-12, loo, np.inf)
    mse = np.mean(loo**2, axis=1)
    best = int(np.argmin(mse))
    loo_res = loo[best]
    return LooResult(
        lam=float(grid[best]),
        lam_grid=_frozen(grid.copy()),
        mse=_frozen(mse),
        loo_residual=_frozen(loo_res.copy()),
        loo_pred=_frozen(y - loo_res),
        leverage=_frozen(lev[best].copy()),
    )


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 − SS_res/SS_tot; NaN when y is constant (undefined)."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if y.shape != pred.shape or y.ndim != 1:
        raise InputError(f"y and pred must be 1-D of the same length; got {y.shape} and {pred.shape}")
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot
