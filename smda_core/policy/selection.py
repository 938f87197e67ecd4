"""Which SAE features the policy reads (DESIGN §3.1): contrast, correlation or an explicit list, from sparse activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from smda_core.errors import ConfigError, InputError

SelectionMethod = Literal["contrast", "correlation", "explicit"]


def _frozen(a: np.ndarray) -> np.ndarray:
    """Mark an array read-only: results are values, not buffers to edit."""
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------- sparse inputs


def _check_coo(
    probe_index: np.ndarray, feature_id: np.ndarray, activation: np.ndarray, n_probes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate COO activations: equal 1-D lengths, indices in range, finite values, no duplicates."""
    pi = np.asarray(probe_index)
    fi = np.asarray(feature_id)
    act = np.asarray(activation, dtype=np.float64)
    if not (pi.ndim == fi.ndim == act.ndim == 1) or not (pi.shape == fi.shape == act.shape):
        raise InputError(
            f"probe_index, feature_id and activation must be 1-D of one length; got {pi.shape}, {fi.shape}, {act.shape}",
            field="activation",
        )
    if pi.size and not (np.issubdtype(pi.dtype, np.integer) and np.issubdtype(fi.dtype, np.integer)):
        raise InputError("probe_index and feature_id must be integers", field="feature_id")
    pi = pi.astype(np.int64, copy=False)
    fi = fi.astype(np.int64, copy=False)
    if n_probes < 1:
        raise InputError(f"n_probes must be ≥ 1; got {n_probes}", field="n_probes")
    if pi.size:
        if pi.min() < 0 or pi.max() >= n_probes:
            raise InputError(f"probe_index must lie in [0, {n_probes}); got range [{pi.min()}, {pi.max()}]", field="probe_index")
        if fi.min() < 0:
            raise InputError("feature_id must be ≥ 0", field="feature_id")
        if not np.all(np.isfinite(act)):
            raise InputError("activations must be finite", field="activation")
        key = pi * (int(fi.max()) + 1) + fi
        if np.unique(key).size != key.size:
            raise InputError("the same (probe, feature) appears more than once", field="feature_id")
    return pi, fi, act


def _probe_array(a: np.ndarray | Sequence, n: int, name: str, dtype: type | None = None) -> np.ndarray:
    arr = np.asarray(a, dtype=dtype)
    if arr.shape != (n,):
        raise InputError(f"{name} must have shape ({n},); got {arr.shape}", field=name)
    return arr


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True, eq=False)
class Selection:
    """Selected feature ids (deterministic order) and the statistic that chose them.

    Attributes:
        feature_ids: (k,) int64; contrast/correlation: by |statistic| descending, ties by id;
            explicit: the given order.
        statistic: (k,) the per-feature statistic (contrast for contrast/explicit, Pearson r for
            correlation), to store beside the policy.
        statistic_name: "contrast" or "pearson_r".
        method: the selection method.
    """

    feature_ids: np.ndarray
    statistic: np.ndarray
    statistic_name: str
    method: str


def _contrast_all(pi: np.ndarray, fi: np.ndarray, act: np.ndarray, harmful: np.ndarray, width: int) -> np.ndarray:
    """mean activation on harmful probes − mean on harmless, for every feature id < width."""
    n_h = int(harmful.sum())
    n_nh = int(harmful.size - n_h)
    if n_h == 0 or n_nh == 0:
        raise InputError(f"all {harmful.size} probes are labelled harmful={bool(n_h)}: the contrast needs both harmful and "
                         "harmless probes; add probes of the other kind to data.probes", field="harmful")
    on_h = harmful[pi]
    sum_h = np.bincount(fi[on_h], weights=act[on_h], minlength=width)
    sum_nh = np.bincount(fi[~on_h], weights=act[~on_h], minlength=width)
    return sum_h / n_h - sum_nh / n_nh


def _rank_by_abs(stat: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidate ids sorted by |stat| descending, ties broken by smaller id (deterministic)."""
    order = np.lexsort((candidates, -np.abs(stat[candidates])))
    return candidates[order]


def select_features(
    probe_index: np.ndarray,
    feature_id: np.ndarray,
    activation: np.ndarray,
    n_probes: int,
    *,
    harmful: np.ndarray,
    y: np.ndarray | None = None,
    method: SelectionMethod = "contrast",
    threshold: float = 0.1,
    max_features: int | None = None,
    k: int = 32,
    min_active: int = 5,
    features: Sequence[int] | None = None,
) -> Selection:
    """Choose the policy's features from sparse activations (DESIGN §3.1), in O(nnz + d_sae).

    Args:
        probe_index, feature_id, activation: COO activations, (nnz,) each; absent entries are 0.
        n_probes: n.
        harmful: (n,) bool.
        y: (n,) behaviour; needed by `correlation`.
        method: `contrast` (|mean harmful − mean harmless| > threshold, top `max_features`),
            `correlation` (top-k |Pearson r| with y among features non-zero on ≥ min_active probes)
            or `explicit` (`features`, in the given order).
    """
    pi, fi, act = _check_coo(probe_index, feature_id, activation, n_probes)
    harmful = _probe_array(harmful, n_probes, "harmful").astype(bool)
    width = int(fi.max()) + 1 if fi.size else 0

    if method == "contrast":
        contrast = _contrast_all(pi, fi, act, harmful, width)
        cand = np.flatnonzero(np.abs(contrast) > threshold)
        ids = _rank_by_abs(contrast, cand)
        if max_features is not None:
            ids = ids[:max_features]
        if ids.size == 0:
            largest = float(np.abs(contrast).max()) if contrast.size else 0.0
            if largest <= 1e-12:
                raise InputError("no SAE feature differs at all between harmful and harmless probes (every contrast is 0): "
                                 "the features read nothing of the prompts; check features.position, model.hook_layer "
                                 "and that the SAE was trained on this model's residual stream", field="contrast_threshold")
            raise InputError(f"no feature has |harmful − harmless contrast| > {threshold} (the largest is {largest:.3g}): "
                             f"set policy.contrast_threshold below {largest:.3g}", field="contrast_threshold")
        return Selection(_frozen(ids.astype(np.int64)), _frozen(contrast[ids]), "contrast", method)

    if method == "correlation":
        if y is None:
            raise InputError("correlation selection needs the behaviour y", field="y")
        yv = _probe_array(y, n_probes, "y", np.float64)
        yc = yv - yv.mean()
        syy = float(yc @ yc)
        if syy == 0.0:
            raise InputError("y is constant: no feature can correlate with it", field="y")
        n = float(n_probes)
        n_active = np.bincount(fi, weights=(act != 0).astype(np.float64), minlength=width)
        sx = np.bincount(fi, weights=act, minlength=width)
        sxx = np.bincount(fi, weights=act * act, minlength=width)
        sxy = np.bincount(fi, weights=act * yc[pi], minlength=width)  # Σ (x−x̄)(y−ȳ) = Σ x (y−ȳ)
        var = sxx - sx * sx / n
        ok = (n_active >= min_active) & (var > 1e-12 * np.maximum(sxx, 1e-300))
        r = np.zeros(width)
        r[ok] = sxy[ok] / np.sqrt(var[ok] * syy)
        ids = _rank_by_abs(r, np.flatnonzero(ok))[:k]
        if ids.size == 0:
            raise InputError(f"no feature is active on ≥ {min_active} probes", field="min_active")
        return Selection(_frozen(ids.astype(np.int64)), _frozen(r[ids]), "pearson_r", method)

    if method == "explicit":
        if not features:
            raise InputError("explicit selection needs a non-empty feature list", field="features")
        ids = np.asarray([int(f) for f in features], dtype=np.int64)
        if ids.min() < 0 or np.unique(ids).size != ids.size:
            raise InputError("explicit feature ids must be distinct and ≥ 0", field="features")
        if harmful.all() or not harmful.any():
            contrast = np.full(int(ids.max()) + 1, np.nan)
        else:
            contrast = _contrast_all(pi, fi, act, harmful, max(width, int(ids.max()) + 1))
        return Selection(_frozen(ids), _frozen(contrast[ids]), "contrast", method)

    raise ConfigError(f"selection must be one of {get_args(SelectionMethod)}; got {method!r}")
