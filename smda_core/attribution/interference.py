"""Interference (DESIGN §4): how much of a pair's Δβ lands outside the features it is about, and active-set flips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np



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
