"""The symbolic policy (DESIGN §3): a few named SAE features whose ridge regression predicts the behaviour.

`fit_policy_arrays` runs the stages, each a pure function of numpy arrays: `selection` picks
feature ids from sparse activations, `design` builds the (n, k) design in raw or standardised
units, the ridge is fitted on all probes (λ fixed or by exact LOO), and the fit report gives R²,
LOO R² and the paper's held-out refusal accuracy next to its majority baseline. `formula`
renders the result for people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smda_core.config import PolicySettings
from smda_core.errors import InputError
from smda_core.policy.ridge import LooResult, RidgeFit, default_lambda_grid, fit_ridge, loo_ridge, r2
from smda_core.model.measurements import ProbeScores
from smda_core.policy.design import Standardiser, design_matrix
from smda_core.policy.selection import Selection, _frozen, _probe_array, select_features

__all__ = ["Policy", "HeldoutSplit", "stratified_split", "best_threshold", "fit_policy_arrays", "fit_policy", "fit_warnings"]




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
    def warnings(self) -> tuple[str, ...]:
        """What makes this fit doubtful, one sentence each naming the setting to change (:func:`fit_warnings`)."""
        return fit_warnings(self)

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
        settings: `PolicySettings` (None → the `default` preset's).
    """
    s = PolicySettings.preset("default") if settings is None else settings
    n = int(n_probes)
    harmful = _probe_array(harmful, n, "harmful").astype(bool)
    yv = _probe_array(y, n, "y", np.float64)
    refused = _probe_array(refused, n, "refused").astype(bool)
    category = _probe_array(category, n, "category")
    if not np.all(np.isfinite(yv)):
        raise InputError("behaviour y has NaN or inf values", field="y")
    if n > 1 and float(np.ptp(yv)) <= 1e-12 * max(1.0, float(np.abs(yv).max())):
        raise InputError(f"the behaviour is the same on all {n} probes (y = {yv[0]:.6g}): there is nothing for a policy "
                         "to explain; the model never begins an answer differently with the refusal openings, so check "
                         "behaviour.refusal_openings (token sequences this model begins a refusal with) and behaviour.kind",
                         field="behaviour")

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




def fit_warnings(policy: Policy) -> tuple[str, ...]:
    """The fit's warning signs, each one sentence that names the setting to change (empty for a sound fit).

    - k ≥ n: at least as many features as probes; the ridge can reproduce every probe, so R² and the
      coefficients say little.
    - λ at an end of the grid leave-one-out searched: the best λ may lie outside it.
    - held-out accuracy not above the majority baseline (the `beats_majority_baseline` asset check).
    """
    out = []
    if policy.k >= policy.n:
        out.append(f"k={policy.k} policy features for n={policy.n} probes (k ≥ n): the ridge can fit every probe "
                   f"exactly, so R² and the coefficients say little; set policy.max_features below {policy.n} "
                   "or raise policy.contrast_threshold")
    grid = policy.lam_grid
    if grid is not None and grid.size > 1 and policy.lam in (grid.min(), grid.max()):
        end, side = ("smallest", "below") if policy.lam == grid.min() else ("largest", "above")
        out.append(f"λ={policy.lam:.4g} is the {end} value of the grid leave-one-out searched ({grid.min():.4g} … "
                   f"{grid.max():.4g}): the best λ may lie {side} it; extend policy.lam_grid")
    if not policy.accuracy > policy.majority_baseline:
        out.append(f"held-out refusal accuracy {policy.accuracy:.3f} does not beat the majority baseline "
                   f"{policy.majority_baseline:.3f}: the policy predicts refusal no better than always guessing the "
                   "majority; more probes, or another features.position or model.hook_layer, may help")
    return tuple(out)


def fit_policy(probes: ProbeScores, settings: PolicySettings | None = None) -> Policy:
    """The symbolic policy over a probe readout (DESIGN §3): arrays in, a fitted `Policy` out."""
    return fit_policy_arrays(probes.coo_probe, probes.coo_feature, probes.coo_value, len(probes.probe_ids),
                             harmful=probes.harmful, y=probes.behaviour, refused=probes.refused, category=probes.category,
                             settings=settings)
