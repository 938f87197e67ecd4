"""How one SFT pair moves the symbolic policy (DESIGN §4 "Attribution", "Scores", "Interference").

Inputs are measured shifts of the probes under a pair's training step: ΔX (raw activations of the
policy features), ΔY (behaviour) and ΔP (refusal_prob). Two estimates of Δβ, each split into the
pathway through the features (ΔX) and through the behaviour (ΔY):

* ``refit`` (exact): Δβ = β(Z+ΔZ, y+ΔY) − β(Z, y); via_y = β(Z, y+ΔY) − β; via_x = β(Z+ΔZ, y) − β;
  via_xy = the rest. Computed without subtracting two large β's: with D, e the (centred) shifts
  and r the base residual (so Zcᵀr = λβ), ``β' − β = M'⁻¹[Zcᵀ(e − Dβ) + Dᵀ(r + e − Dβ)]``,
  ``M' = (Zc+D)ᵀ(Zc+D) + λI``. This keeps full precision for shifts of 1e-4.
* ``linear`` (the paper's derivative): via_x = M⁻¹(Dᵀr − ZcᵀDβ), via_y = M⁻¹Zcᵀe, via_xy = 0
  (the first-order term of the formula above).

Pure numpy; `AttributionResult.to_arrow()` imports pyarrow only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from smda_core.errors import InputError
from smda_core.policy.ridge import RidgeFit

__all__ = [
    "Method",
    "PathwaySplit",
    "InterferenceScore",
    "AttributionResult",
    "delta_beta_refit",
    "delta_beta_linear",
    "via_x_weights",
    "default_intended",
    "interference",
    "count_active_flips",
    "attribute_pairs",
    "bad_pair_auc",
]

Method = Literal["refit", "linear"]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class PathwaySplit:
    """Δβ and its pathways; each (m, k) for m pairs (or (k,) for one). total = via_x + via_y + via_xy."""

    total: np.ndarray
    via_x: np.ndarray
    via_y: np.ndarray
    via_xy: np.ndarray


# --------------------------------------------------------------------------- Δβ


def _prepare(Z: np.ndarray, fit: RidgeFit, dZ: np.ndarray, dY: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Validate and centre: returns Zc (n,k), D (m,n,k), e (m,n), and whether the input was one pair."""
    Z = np.asarray(Z, dtype=np.float64)
    dZ = np.asarray(dZ, dtype=np.float64)
    dY = np.asarray(dY, dtype=np.float64)
    single = dZ.ndim == 2
    if single:
        dZ, dY = dZ[None], dY[None]
    n, k = Z.shape
    if k != fit.k or fit.residual.shape != (n,):
        raise InputError(f"Z has shape {Z.shape} but the fit has k={fit.k}, n={fit.residual.shape[0]}", field="Z")
    if dZ.ndim != 3 or dZ.shape[1:] != (n, k):
        raise InputError(f"ΔZ must have shape (m, {n}, {k}) or ({n}, {k}); got {dZ.shape}", field="dX")
    if dY.shape != dZ.shape[:2]:
        raise InputError(f"ΔY must have shape {dZ.shape[:2]}; got {dY.shape}", field="dY")
    if not (np.all(np.isfinite(dZ)) and np.all(np.isfinite(dY))):
        raise InputError("shifts must be finite (no NaN or inf)", field="dX")
    Zc = Z - fit.z_mean
    if fit.fit_intercept:
        dZ = dZ - dZ.mean(axis=1, keepdims=True)
        dY = dY - dY.mean(axis=1, keepdims=True)
    return Zc, dZ, dY, single


def _unbatch(split: PathwaySplit, single: bool) -> PathwaySplit:
    if not single:
        return split
    return PathwaySplit(split.total[0], split.via_x[0], split.via_y[0], split.via_xy[0])


def delta_beta_refit(Z: np.ndarray, fit: RidgeFit, dZ: np.ndarray, dY: np.ndarray) -> PathwaySplit:
    """Exact Δβ of refitting the ridge on the shifted data, split into ΔX, ΔY and interaction.

    Args:
        Z: the design the base fit used, (n, k).
        fit: `fit_ridge(Z, y, λ, intercept)`.
        dZ: ΔZ in design units, (m, n, k) or (n, k).
        dY: ΔY, (m, n) or (n,).
    """
    Zc, D, e, single = _prepare(Z, fit, dZ, dY)
    beta, r, lam = fit.coef, fit.residual, fit.lam
    k = beta.size
    M = Zc.T @ Zc + lam * np.eye(k)
    ZtD = np.einsum("nk,mnl->mkl", Zc, D)  # Zcᵀ D
    Mp = M[None] + ZtD + ZtD.transpose(0, 2, 1) + np.einsum("mnk,mnl->mkl", D, D)
    Db = D @ beta  # (m, n)
    rhs_x = -(Db @ Zc) + np.einsum("mnk,mn->mk", D, r[None] - Db)
    rhs_t = (e - Db) @ Zc + np.einsum("mnk,mn->mk", D, r[None] + e - Db)
    sol = np.linalg.solve(Mp, np.stack([rhs_x, rhs_t], axis=-1))  # (m, k, 2)
    via_x, total = sol[..., 0], sol[..., 1]
    via_y = (e @ Zc) @ fit.m_inv
    return _unbatch(PathwaySplit(total, via_x, via_y, total - via_x - via_y), single)


def delta_beta_linear(Z: np.ndarray, fit: RidgeFit, dZ: np.ndarray, dY: np.ndarray) -> PathwaySplit:
    """First-order Δβ (the paper's): via_x = M⁻¹(ΔZcᵀr − ZcᵀΔZcβ), via_y = M⁻¹ZcᵀΔY, via_xy = 0.

    Same arguments as `delta_beta_refit`.
    """
    Zc, D, e, single = _prepare(Z, fit, dZ, dY)
    beta, r = fit.coef, fit.residual
    Db = D @ beta
    via_x = (np.einsum("mnk,n->mk", D, r) - Db @ Zc) @ fit.m_inv
    via_y = (e @ Zc) @ fit.m_inv
    return _unbatch(PathwaySplit(via_x + via_y, via_x, via_y, np.zeros_like(via_x)), single)


def via_x_weights(Z: np.ndarray, fit: RidgeFit) -> np.ndarray:
    """The `linear` ΔX pathway as a fixed linear functional of ΔZ: W (k, n, k) with via_x_j = Σ_pl W_jpl ΔZ_pl.

    From via_x = M⁻¹(Dᵀr − ZcᵀDβ) with D the centred ΔZ: the centring drops out (r and Zc are centred), so
    W_jpl = (M⁻¹)_jl r_p − (Zc M⁻¹)_pj β_l. The gradient tier differentiates these k functionals once
    instead of measuring ΔZ for every pair.
    """
    Zc = np.asarray(Z, dtype=np.float64) - fit.z_mean
    return (fit.m_inv[:, None, :] * fit.residual[None, :, None]
            - (Zc @ fit.m_inv).T[:, :, None] * fit.coef[None, None, :])


_SOLVERS = {"refit": delta_beta_refit, "linear": delta_beta_linear}


