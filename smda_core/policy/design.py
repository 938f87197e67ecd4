"""The design matrix (DESIGN §3.2): raw activations or standardised with the base model's frozen mean and std."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from smda_core.errors import InputError
from smda_core.policy.selection import _check_coo, _frozen

DesignKind = Literal["raw", "standardised"]


# --------------------------------------------------------------------------- design


def design_matrix(
    probe_index: np.ndarray, feature_id: np.ndarray, activation: np.ndarray, feature_ids: Sequence[int] | np.ndarray, n_probes: int
) -> np.ndarray:
    """Dense raw activations of the chosen features, (n, k); column j is `feature_ids[j]`."""
    pi, fi, act = _check_coo(probe_index, feature_id, activation, n_probes)
    ids = np.asarray(feature_ids, dtype=np.int64)
    if ids.ndim != 1 or np.unique(ids).size != ids.size:
        raise InputError("feature_ids must be 1-D and distinct", field="feature_ids")
    X = np.zeros((n_probes, ids.size))
    if ids.size == 0 or fi.size == 0:
        return X
    sorter = np.argsort(ids)
    pos = np.searchsorted(ids[sorter], fi)
    pos_c = np.minimum(pos, ids.size - 1)
    hit = ids[sorter][pos_c] == fi
    X[pi[hit], sorter[pos_c[hit]]] = act[hit]
    return X


@dataclass(frozen=True, eq=False)
class Standardiser:
    """Column mean and std of the base model's design, frozen so shifted models share its units.

    std is the population std (ddof=0); a constant column gets std 1 (so it maps to 0, not NaN).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardiser:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise InputError(f"X must be 2-D with at least one row; got {X.shape}", field="X")
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(_frozen(mean), _frozen(std))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Z = (X − mean) / std, for (..., k)."""
        return (np.asarray(X, dtype=np.float64) - self.mean) / self.std

    def scale_shift(self, dX: np.ndarray) -> np.ndarray:
        """ΔZ = ΔX / std: a shift of activations in design units (the mean cancels), (..., k)."""
        return np.asarray(dX, dtype=np.float64) / self.std
