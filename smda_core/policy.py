"""The symbolic policy (DESIGN §3): a few named SAE features whose ridge regression predicts the behaviour.

Stages, each a pure function of numpy arrays:

1. `select_features` picks feature ids from sparse (COO) activations, never densifying the
   SAE's full width (d_sae can be 12k and n 8k);
2. `design_matrix` + `Standardiser` build the (n, k) design in raw or standardised units
   (the base model's mean/std, frozen, so shifted models are measured in the same units);
3. `fit_policy_arrays` fits the ridge on all probes (λ fixed or chosen by exact LOO) and reports
   R², LOO R² and the paper's held-out refusal accuracy next to its majority baseline;
4. `render_formula` prints the policy for people.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from smda_core.errors import ConfigError, InputError
from smda_core.ridge import LooResult, RidgeFit, default_lambda_grid, fit_ridge, loo_ridge, r2

__all__ = [
    "Selection",
    "SelectionMethod",
    "DesignKind",
    "Standardiser",
    "PolicySettings",
    "Policy",
    "HeldoutSplit",
    "paper_settings",
    "default_settings",
    "select_features",
    "design_matrix",
    "stratified_split",
    "best_threshold",
    "fit_policy_arrays",
    "render_formula",
]

SelectionMethod = Literal["contrast", "correlation", "explicit"]
DesignKind = Literal["raw", "standardised"]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PolicySettings:
    """Every choice of §3 in one validated, frozen object (mirrors `config.PolicySection`)."""

    # selection
    selection: SelectionMethod = field(default="contrast", metadata={"help": "contrast | correlation | explicit"})
    contrast_threshold: float = field(default=0.1, metadata={"help": "|mean harmful − mean harmless| must exceed this"})
    max_features: int | None = field(default=None, metadata={"help": "keep the top-N by |contrast|; None = all above threshold"})
    correlation_k: int = field(default=32, metadata={"help": "number of features kept by |Pearson r| with y"})
    min_active: int = field(default=5, metadata={"help": "correlation: a feature must be non-zero on ≥ this many probes"})
    features: tuple[int, ...] | None = field(default=None, metadata={"help": "explicit feature ids (selection=explicit)"})
    # design and ridge
    design: DesignKind = field(default="standardised", metadata={"help": "raw activations or standardised with base mean/std"})
    intercept: bool = field(default=True, metadata={"help": "fit an unpenalised intercept"})
    lam: float | None = field(default=None, metadata={"help": "fixed λ; None = exact leave-one-out over lam_grid"})
    lam_grid: tuple[float, ...] | None = field(default=None, metadata={"help": "λ grid for LOO; None = default_lambda_grid()"})
    # held-out accuracy
    heldout_fraction: float = field(default=0.2, metadata={"help": "share of probes held out (stratified by category, refused)"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out split"})

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"PolicySettings.{name}: {why}; got {getattr(self, name)!r}")

        for name in ("contrast_threshold", "heldout_fraction") + (("lam",) if self.lam is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise bad(name, "must be a number")
        if self.selection not in get_args(SelectionMethod):
            raise bad("selection", f"must be one of {get_args(SelectionMethod)}")
        if self.design not in get_args(DesignKind):
            raise bad("design", f"must be one of {get_args(DesignKind)}")
        if not (np.isfinite(self.contrast_threshold) and self.contrast_threshold >= 0):
            raise bad("contrast_threshold", "must be a finite number ≥ 0")
        if self.max_features is not None and (not isinstance(self.max_features, int) or self.max_features < 1):
            raise bad("max_features", "must be a positive integer or None")
        if not isinstance(self.correlation_k, int) or self.correlation_k < 1:
            raise bad("correlation_k", "must be a positive integer")
        if not isinstance(self.min_active, int) or self.min_active < 1:
            raise bad("min_active", "must be an integer ≥ 1")
        if self.selection == "explicit":
            if not self.features:
                raise bad("features", "selection='explicit' needs a non-empty list of feature ids")
        if self.features is not None:
            try:
                feats = tuple(int(f) for f in self.features)
            except (TypeError, ValueError):
                raise bad("features", "must be a list of integer feature ids") from None
            if any(f < 0 for f in feats) or len(set(feats)) != len(feats):
                raise bad("features", "feature ids must be distinct integers ≥ 0")
            object.__setattr__(self, "features", feats)
        if not isinstance(self.intercept, bool):
            raise bad("intercept", "must be true or false")
        if self.lam is not None and not (np.isfinite(self.lam) and self.lam > 0):
            raise bad("lam", "must be a finite number > 0, or None for leave-one-out")
        if self.lam_grid is not None:
            grid = tuple(float(v) for v in self.lam_grid)
            if not grid or not all(np.isfinite(v) and v > 0 for v in grid):
                raise bad("lam_grid", "must be a non-empty list of finite numbers > 0")
            object.__setattr__(self, "lam_grid", grid)
        if not (0.0 < self.heldout_fraction < 1.0):
            raise bad("heldout_fraction", "must lie strictly between 0 and 1")
        if not isinstance(self.seed, int):
            raise bad("seed", "must be an integer")


def paper_settings(**overrides: object) -> PolicySettings:
    """The reference method: contrast 0.1, raw activations, no intercept, λ = 5."""
    base = PolicySettings(selection="contrast", contrast_threshold=0.1, max_features=None, design="raw", intercept=False, lam=5.0)
    return dataclasses.replace(base, **overrides)


def default_settings(**overrides: object) -> PolicySettings:
    """What we recommend: contrast 0.1 capped at 64 features, standardised, intercept, λ by exact LOO."""
    base = PolicySettings(selection="contrast", contrast_threshold=0.1, max_features=64, design="standardised", intercept=True, lam=None)
    return dataclasses.replace(base, **overrides)


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
        raise InputError("contrast needs both harmful and harmless probes", field="harmful")
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
            raise InputError(f"no feature has |harmful − harmless contrast| > {threshold}: lower contrast_threshold", field="contrast_threshold")
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


# --------------------------------------------------------------------------- held-out accuracy


@dataclass(frozen=True, eq=False)
class HeldoutSplit:
    """A stratified split; `test` is the held-out mask, (n,) bool."""

    test: np.ndarray

    @property
    def train(self) -> np.ndarray:
        return ~self.test


def stratified_split(category: np.ndarray, refused: np.ndarray, fraction: float, seed: int) -> HeldoutSplit:
    """Hold out round(fraction·|S|) probes of every (category, refused) stratum S, seeded.

    Strata are visited in sorted order with one `numpy.random.default_rng(seed)`, so a seed always
    gives the same split for the same labels.
    """
    category = np.asarray(category)
    refused = np.asarray(refused).astype(bool)
    n = category.shape[0]
    _, cat_code = np.unique(category.astype(str), return_inverse=True)
    stratum = cat_code.astype(np.int64) * 2 + refused.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(n, dtype=bool)
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        n_test = int(np.floor(fraction * members.size + 0.5))
        if n_test:
            test[rng.permutation(members)[:n_test]] = True
    return HeldoutSplit(_frozen(test))


def best_threshold(score: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising accuracy of `score > t` as a predictor of `label`; returns (t, accuracy).

    Candidates are the midpoints between consecutive distinct scores plus one below the minimum
    (everything positive) and one above the maximum (nothing positive); ties go to the smallest t.
    """
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label).astype(bool)
    if score.size == 0:
        raise InputError("cannot choose a threshold on no probes", field="refused")
    order = np.argsort(score, kind="stable")
    s, lab = score[order], label[order]
    # boundary after position i (i = 0..n): the first i are predicted negative
    neg_correct = np.concatenate([[0], np.cumsum(~lab)])
    pos_correct = lab.sum() - np.concatenate([[0], np.cumsum(lab)])
    correct = neg_correct + pos_correct
    valid = np.ones(s.size + 1, dtype=bool)
    valid[1:-1] = s[1:] > s[:-1]  # cannot split between equal scores
    correct = np.where(valid, correct, -1)
    i = int(np.argmax(correct))
    spread = max(1.0, float(s[-1] - s[0]))
    if i == 0:
        t = float(s[0] - spread)
    elif i == s.size:
        t = float(s[-1] + spread)
    else:
        t = float(0.5 * (s[i - 1] + s[i]))
    return t, float(correct[i]) / s.size


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, eq=False)
class Policy:
    """A fitted symbolic policy: features, units, ridge, and its fit report (DESIGN §3.4).

    The ridge (`fit`) uses all probes; `accuracy`/`majority_baseline`/`threshold` come from a
    separate refit on the 80% training part of a stratified split (`heldout` marks the 20%).
    """

    settings: PolicySettings
    feature_ids: np.ndarray  # (k,)
    selection: Selection
    standardiser: Standardiser | None  # None for the raw design
    fit: RidgeFit
    lam: float
    lam_grid: np.ndarray | None  # grid searched by LOO (None when λ was fixed)
    loo_mse: np.ndarray | None  # LOO MSE per grid λ
    r2: float
    loo_r2: float
    accuracy: float
    majority_baseline: float
    threshold: float
    heldout: np.ndarray  # (n,) bool
    n: int
    k: int
    X: np.ndarray  # (n, k) raw activations of the policy features
    Z: np.ndarray  # (n, k) design (raw or standardised)
    y: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,) in-sample b + Zβ
    loo_predicted: np.ndarray  # (n,) exact leave-one-out predictions

    @property
    def coef(self) -> np.ndarray:
        return self.fit.coef

    @property
    def intercept(self) -> float:
        return self.fit.intercept

    def design(self, X_raw: np.ndarray) -> np.ndarray:
        """Raw activations of the policy features (..., k) → design units."""
        X_raw = np.asarray(X_raw, dtype=np.float64)
        if X_raw.shape[-1] != self.k:
            raise InputError(f"expected {self.k} policy feature columns; got shape {X_raw.shape}", field="X")
        return X_raw if self.standardiser is None else self.standardiser.transform(X_raw)

    def shift(self, dX_raw: np.ndarray) -> np.ndarray:
        """Raw activation shift (..., k) → ΔZ in design units."""
        dX_raw = np.asarray(dX_raw, dtype=np.float64)
        if dX_raw.shape[-1] != self.k:
            raise InputError(f"expected {self.k} policy feature columns; got shape {dX_raw.shape}", field="dX")
        return dX_raw if self.standardiser is None else self.standardiser.scale_shift(dX_raw)

    def predict(self, X_raw: np.ndarray) -> np.ndarray:
        """Predicted behaviour for raw activations of the policy features, (n, k) → (n,)."""
        return self.fit.predict(self.design(X_raw))


def fit_policy_arrays(
    probe_index: np.ndarray,
    feature_id: np.ndarray,
    activation: np.ndarray,
    n_probes: int,
    *,
    harmful: np.ndarray,
    y: np.ndarray,
    refused: np.ndarray,
    category: np.ndarray,
    settings: PolicySettings | None = None,
) -> Policy:
    """Selection → design → ridge on all probes, plus the fit report (DESIGN §3).

    Args:
        probe_index, feature_id, activation: COO SAE activations at the configured position.
        n_probes: n.
        harmful, y, refused, category: per-probe arrays, (n,).
        settings: `PolicySettings` (None → `default_settings()`).
    """
    s = default_settings() if settings is None else settings
    n = int(n_probes)
    harmful = _probe_array(harmful, n, "harmful").astype(bool)
    yv = _probe_array(y, n, "y", np.float64)
    refused = _probe_array(refused, n, "refused").astype(bool)
    category = _probe_array(category, n, "category")
    if not np.all(np.isfinite(yv)):
        raise InputError("behaviour y has NaN or inf values", field="y")

    sel = select_features(
        probe_index,
        feature_id,
        activation,
        n,
        harmful=harmful,
        y=yv,
        method=s.selection,
        threshold=s.contrast_threshold,
        max_features=s.max_features,
        k=s.correlation_k,
        min_active=s.min_active,
        features=s.features,
    )
    X = design_matrix(probe_index, feature_id, activation, sel.feature_ids, n)
    standardiser = Standardiser.fit(X) if s.design == "standardised" else None
    Z = X if standardiser is None else standardiser.transform(X)

    grid = None
    if s.lam is None:
        grid = np.asarray(s.lam_grid if s.lam_grid is not None else default_lambda_grid(), dtype=np.float64)
        loo: LooResult = loo_ridge(Z, yv, grid, s.intercept)
    else:
        loo = loo_ridge(Z, yv, (s.lam,), s.intercept)
    lam = loo.lam
    fit = fit_ridge(Z, yv, lam, s.intercept)
    predicted = fit.predict(Z)

    split = stratified_split(category, refused, s.heldout_fraction, s.seed)
    train, test = split.train, split.test
    if train.sum() < 2 or test.sum() < 1:
        raise InputError(f"too few probes ({n}) for a {s.heldout_fraction:.0%} held-out split", field="heldout_fraction")
    fit_train = fit_ridge(Z[train], yv[train], lam, s.intercept)
    threshold, _ = best_threshold(fit_train.predict(Z[train]), refused[train])
    accuracy = float(np.mean((fit_train.predict(Z[test]) > threshold) == refused[test]))
    majority = bool(refused[train].sum() * 2 >= train.sum())  # ties count as "refused"
    baseline = float(np.mean(refused[test] == majority))

    return Policy(
        settings=s,
        feature_ids=sel.feature_ids,
        selection=sel,
        standardiser=standardiser,
        fit=fit,
        lam=lam,
        lam_grid=None if grid is None else _frozen(grid.copy()),
        loo_mse=None if grid is None else loo.mse,
        r2=r2(yv, predicted),
        loo_r2=r2(yv, loo.loo_pred),
        accuracy=accuracy,
        majority_baseline=baseline,
        threshold=threshold,
        heldout=split.test,
        n=n,
        k=int(sel.feature_ids.size),
        X=_frozen(X),
        Z=_frozen(Z),
        y=_frozen(yv.copy()),
        predicted=_frozen(predicted),
        loo_predicted=loo.loo_pred,
    )


# --------------------------------------------------------------------------- rendering


def _fmt(v: float) -> str:
    return f"{abs(v):.3g}"


def render_formula(
    policy: Policy,
    labels: Mapping[int, str] | None = None,
    behaviour_name: str = "refusal",
    top: int | None = None,
) -> str:
    """The policy as a formula, features by |β| descending, e.g.
    ``refusal ≈ 0.41 + 0.12·[weapons instructions] − 0.07·[recipe request] …``.

    Unlabelled features show as ``[feature 123]``; with `top`, the rest collapse into "…".
    """
    labels = labels or {}
    coef = policy.coef
    order = np.lexsort((policy.feature_ids, -np.abs(coef)))
    shown = order if top is None else order[: max(int(top), 0)]
    parts: list[str] = []
    if policy.fit.fit_intercept:
        parts.append(("−" if policy.intercept < 0 else "") + _fmt(policy.intercept))
    for j in shown:
        fid = int(policy.feature_ids[j])
        label = labels.get(fid) or f"feature {fid}"
        term = f"{_fmt(coef[j])}·[{label}]"
        if parts:
            parts.append(("− " if coef[j] < 0 else "+ ") + term)
        else:
            parts.append(("−" if coef[j] < 0 else "") + term)
    if len(shown) < len(order):
        parts.append("…")
    if not parts:
        parts.append("0")
    return f"{behaviour_name} ≈ " + " ".join(parts)
