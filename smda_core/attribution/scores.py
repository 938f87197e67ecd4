"""Every pair's Δβ under each method, its scores and interference, as the columns of the warehouse tables (DESIGN §4, §6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from smda_core.errors import ConfigError, InputError
from smda_core.policy.fit import Policy
from smda_core.attribution.interference import InterferenceScore, count_active_flips, default_intended, interference
from smda_core.attribution.pathways import Method, PathwaySplit, _SOLVERS


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
    pair_mechanism: dict[str, Any] = field(default_factory=dict)
    completeness: dict[str, float] = field(default_factory=dict)

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

        out = {
            "pair_attribution": table(self.pair_attribution),
            "pair_summary": table(self.pair_summary),
            "pair_group_effects": table(self.pair_group_effects),
            "pair_group_shift": table(self.pair_group_shift),
        }
        if self.pair_mechanism:
            out["pair_mechanism"] = table(self.pair_mechanism)
        return out


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
    pair_ids = np.asarray(pair_ids)
    dX, dY, dP, pair_prompt_X, harmful, category, flips = _checked_inputs(
        policy, pair_ids, dX, dY, dP, pair_prompt_X, probe_harmful, probe_category, active_flips, intended)
    dZ = policy.shift(dX)
    splits = {meth: _delta_beta(meth, policy, dZ, dY, chunk_size) for meth in methods}
    summary = _summary(policy, pair_ids, splits, primary, dY, dP, harmful, flips, pair_prompt_X, intended, intended_top)
    effects, shifts = _group_tables(policy, pair_ids, splits[primary].total, dZ, dY, dP, harmful, category, chunk_size)
    return AttributionResult(_attribution_table(policy, pair_ids, splits, methods), summary, effects, shifts, splits, primary)


def _checked_inputs(policy: Policy, pair_ids: np.ndarray, dX, dY, dP, pair_prompt_X, probe_harmful, probe_category,
                    active_flips, intended) -> tuple:
    """The arrays as float64 with their shapes checked; active flips counted here when the caller has none."""
    n, k = policy.n, policy.k
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
    return dX, dY, dP, pair_prompt_X, harmful, category, flips


def _delta_beta(method: str, policy: Policy, dZ: np.ndarray, dY: np.ndarray, chunk_size: int) -> PathwaySplit:
    """Δβ of every pair under one method, in chunks of pairs (bounds temporary memory)."""
    m = dZ.shape[0]
    parts = [_SOLVERS[method](policy.Z, policy.fit, dZ[s : s + chunk_size], dY[s : s + chunk_size]) for s in range(0, m, chunk_size)]
    if not parts:
        z = np.zeros((0, policy.k))
        return PathwaySplit(z, z, z, z)
    return PathwaySplit(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("total", "via_x", "via_y", "via_xy")))


def _attribution_table(policy: Policy, pair_ids: np.ndarray, splits: dict[str, PathwaySplit], methods: tuple[str, ...]) -> dict:
    """pair_attribution: one row per pair × method × policy feature."""
    m, k, n_meth = pair_ids.shape[0], policy.k, len(methods)
    cols: dict[str, Any] = {
        "pair_id": np.repeat(pair_ids, n_meth * k),
        "feature_id": np.tile(policy.feature_ids, m * n_meth),
        "method": np.tile(np.repeat(np.asarray(methods, dtype=object), k), m),
    }
    for col in ("delta_beta", "via_x", "via_y", "via_xy"):
        attr = "total" if col == "delta_beta" else col
        cols[col] = np.stack([getattr(splits[meth], attr) for meth in methods], axis=1).reshape(-1)
    cols["contribution"] = cols["delta_beta"] * np.tile(policy.coef, m * n_meth)
    return cols


def _summary(policy: Policy, pair_ids: np.ndarray, splits: dict[str, PathwaySplit], primary: str, dY: np.ndarray,
             dP: np.ndarray, harmful: np.ndarray, flips: np.ndarray, pair_prompt_X: np.ndarray,
             intended: Sequence[Sequence[int] | None] | None, intended_top: int) -> dict:
    """pair_summary: one row per pair (alignment per method, behaviour shifts, flips, interference)."""
    beta, fids = policy.coef, policy.feature_ids
    m = pair_ids.shape[0]
    align = {meth: (splits[meth].total @ beta if meth in splits else np.full(m, np.nan)) for meth in get_args(Method)}
    dp_h, dp_nh = _group_mean(harmful, dP), _group_mean(~harmful, dP)
    intended_lists: list[list[int]] = []
    scores: list[InterferenceScore] = []
    for i in range(m):
        given = None if intended is None else intended[i]
        chosen = [int(f) for f in given] if given is not None else default_intended(pair_prompt_X[i], fids, intended_top)
        intended_lists.append(chosen)
        scores.append(interference(splits[primary].total[i], fids, chosen))
    return {
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
        "interference_legacy": np.asarray([s.interference for s in scores], dtype=np.float64),
        "flagged_legacy": np.asarray([s.flagged for s in scores], dtype=bool),
    }


def _group_tables(policy: Policy, pair_ids: np.ndarray, primary_db: np.ndarray, dZ: np.ndarray, dY: np.ndarray,
                  dP: np.ndarray, harmful: np.ndarray, category: np.ndarray, chunk_size: int) -> tuple[dict, dict]:
    """pair_group_effects (pair × group × feature: activation and weight parts) and pair_group_shift (pair × group)."""
    m, k, beta, fids = pair_ids.shape[0], policy.k, policy.coef, policy.feature_ids
    names, W, counts = _groups(harmful, category)
    g = len(names)
    mean_dZ = np.concatenate([np.einsum("gn,mnk->mgk", W, dZ[s : s + chunk_size]) for s in range(0, m, chunk_size)]) if m else np.zeros((0, g, k))
    mean_Z = W @ policy.Z  # (g, k)
    group_dy = dY @ W.T  # (m, g)
    group_dp = dP @ W.T
    effects: dict[str, Any] = {
        "pair_id": np.repeat(pair_ids, g * k),
        "group": np.tile(np.repeat(np.asarray(names, dtype=object), k), m),
        "feature_id": np.tile(fids, m * g),
        "activation_part": (mean_dZ * beta[None, None, :]).reshape(-1),
        "weight_part": (mean_Z[None, :, :] * primary_db[:, None, :]).reshape(-1),
        "dy": np.repeat(group_dy.reshape(-1), k),
    }
    shifts: dict[str, Any] = {
        "pair_id": np.repeat(pair_ids, g),
        "group": np.tile(np.asarray(names, dtype=object), m),
        "n_probes": np.tile(counts, m),
        "dy": group_dy.reshape(-1),
        "dp": group_dp.reshape(-1),
    }
    return effects, shifts


def attribute_first_order(policy: Policy, pair_ids: Sequence[Any] | np.ndarray, via_x: np.ndarray, dY: np.ndarray,
                          dP: np.ndarray, *, pair_prompt_X: np.ndarray, probe_harmful: np.ndarray,
                          probe_category: np.ndarray, intended: Sequence[Sequence[int] | None] | None = None,
                          intended_top: int = 3, method: str = "gradient") -> AttributionResult:
    """The tables of `attribute_pairs` from first-order shifts without per-probe ΔX (the gradient tier).

    Δβ is the `linear` estimate: via_x (m, k) as the tier computed it (the ΔX functionals of
    `pathways.via_x_weights`), via_y = M⁻¹ Zcᵀ ΔY from the per-probe ΔY (m, n), via_xy = 0. Rows carry
    `method`; `alignment_linear` is this Δβ's alignment; the activation parts of the group effects and
    `active_flips` need per-probe ΔX, so they are NaN and 0.
    """
    pair_ids = np.asarray(pair_ids)
    m, n, k = pair_ids.shape[0], policy.n, policy.k
    via_x = np.asarray(via_x, dtype=np.float64).reshape(m, k)
    dY = np.asarray(dY, dtype=np.float64).reshape(m, n)
    dP = np.asarray(dP, dtype=np.float64).reshape(m, n)
    harmful = np.asarray(probe_harmful).astype(bool)
    category = np.asarray(probe_category)
    e = dY - dY.mean(axis=1, keepdims=True) if policy.fit.fit_intercept else dY
    via_y = (e @ (policy.Z - policy.fit.z_mean)) @ policy.fit.m_inv
    split = PathwaySplit(via_x + via_y, via_x, via_y, np.zeros_like(via_x))
    flips = np.zeros(m, dtype=np.int64)
    summary = _summary(policy, pair_ids, {"linear": split}, "linear", dY, dP, harmful, flips,
                       np.asarray(pair_prompt_X, dtype=np.float64), intended, intended_top)
    zeros = np.broadcast_to(np.zeros(1), (m, n, k))  # no per-probe ΔX: activation parts are set to NaN below
    effects, shifts = _group_tables(policy, pair_ids, split.total, zeros, dY, dP, harmful, category, 16)
    effects["activation_part"] = np.full(len(effects["activation_part"]), np.nan)
    return AttributionResult(_attribution_table(policy, pair_ids, {method: split}, (method,)), summary, effects, shifts,
                             {method: split}, method)
