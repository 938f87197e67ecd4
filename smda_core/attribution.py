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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from smda_core.errors import ConfigError, InputError
from smda_core.policy import Policy
from smda_core.ridge import RidgeFit

__all__ = [
    "Method",
    "PathwaySplit",
    "InterferenceScore",
    "AttributionResult",
    "delta_beta_refit",
    "delta_beta_linear",
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


_SOLVERS = {"refit": delta_beta_refit, "linear": delta_beta_linear}


# --------------------------------------------------------------------------- interference


@dataclass(frozen=True)
class InterferenceScore:
    """Dominant feature of a pair's Δβ and how much of |Δβ| falls outside its intended features.

    When Δβ is exactly zero the shares are NaN and nothing is flagged.
    """

    dominant_feature: int
    dominant_share: float
    interference: float
    flagged: bool


def default_intended(prompt_x: np.ndarray, feature_ids: np.ndarray, top: int = 3) -> list[int]:
    """The policy features most active on the pair's own prompt: top `top` with activation > 0.

    Ties go to the earlier policy column.
    """
    prompt_x = np.asarray(prompt_x, dtype=np.float64)
    order = np.argsort(-prompt_x, kind="stable")[:top]
    return [int(feature_ids[j]) for j in order if prompt_x[j] > 0]


def interference(delta_beta: np.ndarray, feature_ids: np.ndarray, intended: Sequence[int]) -> InterferenceScore:
    """dominant = argmax_j |Δβ_j|; share = |Δβ_dom|/Σ|Δβ|; interference = 1 − Σ_intended|Δβ|/Σ|Δβ|.

    A pair is flagged when its dominant feature is not intended. Intended ids that are not policy
    features count for nothing.
    """
    a = np.abs(np.asarray(delta_beta, dtype=np.float64))
    feature_ids = np.asarray(feature_ids)
    j = int(np.argmax(a))
    dom = int(feature_ids[j])
    total = float(a.sum())
    if total == 0.0:
        return InterferenceScore(dom, float("nan"), float("nan"), False)
    mask = np.isin(feature_ids, np.asarray(list(intended), dtype=np.int64))
    return InterferenceScore(dom, float(a[j]) / total, 1.0 - float(a[mask].sum()) / total, dom not in set(int(i) for i in intended))


def count_active_flips(X_base: np.ndarray, X_shifted: np.ndarray) -> np.ndarray | int:
    """How many (probe, feature) activations crossed zero: (X_base > 0) ≠ (X_shifted > 0).

    (n, k) pairs give an int; (m, n, k) shifted against (n, k) base give (m,).
    """
    X_base = np.asarray(X_base)
    X_shifted = np.asarray(X_shifted)
    flips = (X_base > 0) != (X_shifted > 0)
    if flips.ndim == 2:
        return int(flips.sum())
    return flips.reshape(flips.shape[0], -1).sum(axis=1).astype(np.int64)


# --------------------------------------------------------------------------- batch API


@dataclass(frozen=True, eq=False)
class AttributionResult:
    """Columns of the long tables of DESIGN §6 (column names are the contract).

    Attributes:
        pair_attribution: pair_id, feature_id, method, delta_beta, via_x, via_y, via_xy, contribution
            (one row per pair × method × policy feature).
        pair_summary: pair_id, alignment (primary method), alignment_refit, alignment_linear
            (NaN for a method not computed), correctness_shift, dy_harmful, dy_harmless,
            active_flips, dominant_feature, dominant_share, intended_features (list of ints),
            interference, flagged (one row per pair).
        pair_group_effects: pair_id, group, feature_id, activation_part, weight_part, dy
            (pair × group × feature; group is 'harmful', 'harmless' or 'category:<name>').
        pair_group_shift: pair_id, group, n_probes, dy, dp (pair × group; the mean ΔY and ΔP).
        splits: method → PathwaySplit with (m, k) arrays, for programmatic use.
        primary: the method behind `alignment`, interference and the weight part.
    """

    pair_attribution: dict[str, Any]
    pair_summary: dict[str, Any]
    pair_group_effects: dict[str, Any]
    pair_group_shift: dict[str, Any]
    splits: dict[str, PathwaySplit]
    primary: str

    def to_arrow(self) -> dict[str, Any]:
        """The four tables as pyarrow Tables, keyed by table name."""
        import pyarrow as pa

        def column(v: Any) -> Any:
            a = v if isinstance(v, list) else np.asarray(v)
            if isinstance(a, np.ndarray) and a.dtype.kind in "OU":
                a = a.tolist()
            return pa.array(a)

        def table(cols: dict[str, Any]) -> Any:
            return pa.table({name: column(v) for name, v in cols.items()})

        return {
            "pair_attribution": table(self.pair_attribution),
            "pair_summary": table(self.pair_summary),
            "pair_group_effects": table(self.pair_group_effects),
            "pair_group_shift": table(self.pair_group_shift),
        }


def _check_methods(methods: Sequence[str], primary: str) -> tuple[str, ...]:
    methods = tuple(methods)
    allowed = get_args(Method)
    if not methods or any(m not in allowed for m in methods) or len(set(methods)) != len(methods):
        raise ConfigError(f"methods must be distinct values from {allowed}; got {methods!r}")
    if primary not in methods:
        raise ConfigError(f"primary must be one of the computed methods {methods}; got {primary!r}")
    return methods


def _groups(harmful: np.ndarray, category: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Group names, a (g, n) matrix whose rows average over each non-empty group, and group sizes."""
    names, rows, sizes = [], [], []
    masks = [("harmful", harmful), ("harmless", ~harmful)]
    cats = category.astype(str)
    masks += [(f"category:{c}", cats == c) for c in np.unique(cats)]
    for name, mask in masks:
        if mask.any():
            names.append(name)
            rows.append(mask / mask.sum())
            sizes.append(int(mask.sum()))
    return names, np.asarray(rows, dtype=np.float64).reshape(len(names), -1), np.asarray(sizes, dtype=np.int64)


def _group_mean(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean over probes in `mask` of (m, n) values; NaN when the group is empty."""
    if not mask.any():
        return np.full(values.shape[0], np.nan)
    return values[:, mask].mean(axis=1)


def attribute_pairs(
    policy: Policy,
    pair_ids: Sequence[Any] | np.ndarray,
    dX: np.ndarray,
    dY: np.ndarray,
    dP: np.ndarray,
    *,
    pair_prompt_X: np.ndarray,
    probe_harmful: np.ndarray,
    probe_category: np.ndarray,
    active_flips: np.ndarray | Sequence[int] | None = None,
    intended: Sequence[Sequence[int] | None] | None = None,
    intended_top: int = 3,
    methods: Sequence[Method] = ("refit", "linear"),
    primary: Method = "refit",
    chunk_size: int = 16,
) -> AttributionResult:
    """Δβ, scores and interference for m pairs (DESIGN §4).

    Args:
        policy: the fitted policy (its Z, y, λ, intercept and standardiser are used).
        pair_ids: m ids (any scalar type).
        dX: raw activation shifts of the policy features, (m, n, k); converted to ΔZ = ΔX/σ.
        dY: behaviour shifts, (m, n).
        dP: refusal_prob shifts, (m, n).
        pair_prompt_X: raw activations of the policy features on each pair's own prompt, (m, k).
        probe_harmful: (n,) bool. probe_category: (n,) str.
        active_flips: (m,) counts of (probe, feature) zero crossings from the caller (needed for
            linearised ΔX, which cannot flip); None → from `policy.X` and `policy.X + dX`.
        intended: per pair, intended feature ids (None entries → the default top-`intended_top`).
        methods, primary: which estimates to compute; `primary` drives `alignment`,
            interference and the weight part.
        chunk_size: pairs processed at once (bounds temporary memory).
    """
    methods = _check_methods(methods, primary)
    n, k = policy.n, policy.k
    pair_ids = np.asarray(pair_ids)
    m = pair_ids.shape[0]
    dX = np.asarray(dX, dtype=np.float64)
    dY = np.asarray(dY, dtype=np.float64)
    dP = np.asarray(dP, dtype=np.float64)
    pair_prompt_X = np.asarray(pair_prompt_X, dtype=np.float64)
    if pair_ids.ndim != 1:
        raise InputError(f"pair_ids must be 1-D; got shape {pair_ids.shape}", field="pair_id")
    for name, arr, shape in (("dX", dX, (m, n, k)), ("dY", dY, (m, n)), ("dP", dP, (m, n)), ("pair_prompt_X", pair_prompt_X, (m, k))):
        if arr.shape != shape:
            raise InputError(f"{name} must have shape {shape}; got {arr.shape}", field=name)
    harmful = np.asarray(probe_harmful).astype(bool)
    category = np.asarray(probe_category)
    if harmful.shape != (n,) or category.shape != (n,):
        raise InputError(f"probe_harmful and probe_category must have shape ({n},)", field="harmful")
    if intended is not None and len(intended) != m:
        raise InputError(f"intended must name features for each of the {m} pairs", field="intended_features")
    if active_flips is None:
        flips = count_active_flips(policy.X, policy.X[None] + dX) if m else np.zeros(0, np.int64)
    else:
        flips = np.asarray(active_flips, dtype=np.int64)
        if flips.shape != (m,):
            raise InputError(f"active_flips must have shape ({m},); got {flips.shape}", field="active_flips")

    # Δβ per method, in chunks of pairs
    dZ_all = policy.shift(dX)
    splits: dict[str, PathwaySplit] = {}
    for meth in methods:
        parts = [_SOLVERS[meth](policy.Z, policy.fit, dZ_all[s : s + chunk_size], dY[s : s + chunk_size]) for s in range(0, m, chunk_size)]
        if parts:
            splits[meth] = PathwaySplit(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("total", "via_x", "via_y", "via_xy")))
        else:
            z = np.zeros((0, k))
            splits[meth] = PathwaySplit(z, z, z, z)
    beta = policy.coef
    fids = policy.feature_ids

    # pair_attribution: pair × method × feature
    n_meth = len(methods)
    pa_cols: dict[str, Any] = {
        "pair_id": np.repeat(pair_ids, n_meth * k),
        "feature_id": np.tile(fids, m * n_meth),
        "method": np.tile(np.repeat(np.asarray(methods, dtype=object), k), m),
    }
    for col in ("delta_beta", "via_x", "via_y", "via_xy"):
        attr = "total" if col == "delta_beta" else col
        pa_cols[col] = np.stack([getattr(splits[meth], attr) for meth in methods], axis=1).reshape(-1)
    pa_cols["contribution"] = pa_cols["delta_beta"] * np.tile(beta, m * n_meth)

    # pair_summary
    primary_db = splits[primary].total
    align = {meth: (splits[meth].total @ beta if meth in splits else np.full(m, np.nan)) for meth in get_args(Method)}
    dp_h, dp_nh = _group_mean(harmful, dP), _group_mean(~harmful, dP)
    intended_lists: list[list[int]] = []
    scores: list[InterferenceScore] = []
    for i in range(m):
        given = None if intended is None else intended[i]
        chosen = [int(f) for f in given] if given is not None else default_intended(pair_prompt_X[i], fids, intended_top)
        intended_lists.append(chosen)
        scores.append(interference(primary_db[i], fids, chosen))
    summary: dict[str, Any] = {
        "pair_id": pair_ids,
        "alignment": align[primary],
        "alignment_refit": align["refit"],
        "alignment_linear": align["linear"],
        "correctness_shift": 0.5 * (dp_h - dp_nh),
        "dy_harmful": _group_mean(harmful, dY),
        "dy_harmless": _group_mean(~harmful, dY),
        "active_flips": flips,
        "dominant_feature": np.asarray([s.dominant_feature for s in scores], dtype=np.int64),
        "dominant_share": np.asarray([s.dominant_share for s in scores], dtype=np.float64),
        "intended_features": intended_lists,
        "interference": np.asarray([s.interference for s in scores], dtype=np.float64),
        "flagged": np.asarray([s.flagged for s in scores], dtype=bool),
    }

    # group effects: pair × group × feature
    names, W, counts = _groups(harmful, category)
    g = len(names)
    mean_dZ = np.concatenate([np.einsum("gn,mnk->mgk", W, dZ_all[s : s + chunk_size]) for s in range(0, m, chunk_size)]) if m else np.zeros((0, g, k))
    mean_Z = W @ policy.Z  # (g, k)
    group_dy = dY @ W.T  # (m, g)
    group_dp = dP @ W.T
    ge_cols: dict[str, Any] = {
        "pair_id": np.repeat(pair_ids, g * k),
        "group": np.tile(np.repeat(np.asarray(names, dtype=object), k), m),
        "feature_id": np.tile(fids, m * g),
        "activation_part": (mean_dZ * beta[None, None, :]).reshape(-1),
        "weight_part": (mean_Z[None, :, :] * primary_db[:, None, :]).reshape(-1),
        "dy": np.repeat(group_dy.reshape(-1), k),
    }
    gs_cols: dict[str, Any] = {
        "pair_id": np.repeat(pair_ids, g),
        "group": np.tile(np.asarray(names, dtype=object), m),
        "n_probes": np.tile(counts, m),
        "dy": group_dy.reshape(-1),
        "dp": group_dp.reshape(-1),
    }
    return AttributionResult(pa_cols, summary, ge_cols, gs_cols, splits, primary)


# --------------------------------------------------------------------------- evaluation


def bad_pair_auc(scores: np.ndarray | Sequence[float], is_bad: np.ndarray | Sequence[bool]) -> float:
    """Mann–Whitney AUC: P(score of a bad pair > score of a good pair), ties counting ½.

    Higher scores are read as "more likely bad"; flip the sign of a score that points the other
    way. NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    bad = np.asarray(is_bad).astype(bool)
    if s.shape != bad.shape or s.ndim != 1:
        raise InputError(f"scores and is_bad must be 1-D of one length; got {s.shape} and {bad.shape}", field="scores")
    if not np.all(np.isfinite(s)):
        raise InputError("scores must be finite", field="scores")
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    if n_bad == 0 or n_good == 0:
        return float("nan")
    # average ranks (1-based), ties sharing the mean rank
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_s[1:] != sorted_s[:-1]]))
    ends = np.concatenate([starts[1:], [s.size]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[bad].sum() - n_bad * (n_bad + 1) / 2.0) / (n_bad * n_good))
