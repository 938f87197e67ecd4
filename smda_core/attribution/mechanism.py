"""Which features a pair acts through (DESIGN §4 "Mechanism"), and where its effect lands (calibrated interference).

Two explanations of a pair's log-odds score `S_i = Σ_p W_ip Δℓ_ip`:

- through the policy: its features refitted on the base log-odds ℓ (the unit of the scores; same design,
  λ and intercept), so that the refit's predicted shift of probe p is `Σ_j (ΔZ_pj β_j + (Z_pj + ΔZ_pj) Δβ_j)`
  plus the intercept's move; S splits per policy feature into an activation part `Σ_p W_ip ΔZ_ipj β_j` and a
  weight part `Σ_p W_ip (Z+ΔZ)_ipj Δβ_ij`, and the intercept takes the uniform push. (Through the policy of y
  itself the split is poor: Δℓ = Δy/(1−p) weighs nearly saturated probes by up to 100×.) How complete the
  split is across pairs is reported (rank correlation with the measured score).
- by an effect fit: most of one pair's shift is the generic push of its response type (refusal or
  compliance), shared by every pair of that type; the residual is what is specific to the pair. It is
  regressed over probes on every SAE feature active on them (ridge, standardised columns), and the
  features whose fitted part carries the most harm (signed: less refusal where refusal is right, more
  where it is not) are named.

Interference: the share of the pair's residual harm that lands on probes unlike its own prompt (outside
its 15 nearest probes, the neighbourhood `local_shift` reads), flagged when it is an outlier among pairs of the same response type (robust
z > 3). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smda_core.attribution.logodds import signs
from smda_core.attribution.separation import spearman
from smda_core.attribution.pathways import delta_beta_refit
from smda_core.policy.fit import Policy
from smda_core.policy.ridge import fit_ridge

@dataclass(frozen=True)
class PolicyParts:
    """Per pair and policy feature, the activation and weight parts of one score, the intercept's part
    (the uniform push), and how complete the split is."""

    activation: np.ndarray  # (m, k)
    weight: np.ndarray  # (m, k)
    intercept: np.ndarray  # (m,)
    completeness: float  # Spearman across pairs of (Σ_j parts + intercept part) with the score

    @property
    def total(self) -> np.ndarray:
        return self.activation + self.weight


@dataclass(frozen=True)
class LogOddsPolicy:
    """The policy's features refitted on the base log-odds ℓ (same design, λ, intercept), and every pair's
    refit Δβ on (Z + ΔZ, ℓ + Δℓ): the policy in the unit the scores are measured in."""

    coef: np.ndarray  # (k,)
    delta_beta: np.ndarray  # (m, k)
    delta_intercept: np.ndarray  # (m,)


def logodds_policy(policy: Policy, p_base: np.ndarray, dZ: np.ndarray, dl: np.ndarray) -> LogOddsPolicy:
    p = np.clip(np.asarray(p_base, dtype=np.float64), 1e-12, 1 - 1e-12)
    fit = fit_ridge(policy.Z, np.log(p) - np.log1p(-p), policy.lam, policy.fit.fit_intercept)
    db = delta_beta_refit(policy.Z, fit, dZ, dl).total.reshape(dl.shape[0], -1)
    zbar = policy.Z.mean(0)
    if fit.fit_intercept:
        d_int = dl.mean(1) - np.einsum("mk,mk->m", zbar[None] + dZ.mean(1), fit.coef[None] + db) + zbar @ fit.coef
    else:
        d_int = np.zeros(dl.shape[0])
    return LogOddsPolicy(fit.coef, db, d_int)


def policy_parts(policy: Policy, lp: LogOddsPolicy, dZ: np.ndarray, weights: np.ndarray, score: np.ndarray) -> PolicyParts:
    """Split a score `Σ_p W_ip Δℓ_ip` over the policy's features through the log-odds policy `lp`.

    Shapes: dZ (m, n, k) in design units, weights (m, n), score (m,).
    """
    w = np.asarray(weights)
    act = np.einsum("mn,mnk->mk", w, dZ) * lp.coef[None, :]
    wt = (w @ policy.Z + np.einsum("mn,mnk->mk", w, dZ)) * lp.delta_beta
    icpt = w.sum(1) * lp.delta_intercept
    comp = spearman(act.sum(1) + wt.sum(1) + icpt, score) if len(score) > 2 else float("nan")
    return PolicyParts(act, wt, icpt, comp)


def consistency_parts(policy: Policy, prompt_X: np.ndarray, response_refuses: np.ndarray, centre: np.ndarray,
                      scale: np.ndarray, score: np.ndarray) -> PolicyParts:
    """Split `(screen_consistency − centre) / scale` over the policy's features: the prediction b + Σ_j Z_j β_j
    of the pair's prompt is linear, so feature j's part is r·Z_j β_j / scale (an activation part: the prompt's
    activation read through the fixed weight) and the intercept takes (r·(b − threshold) − centre) / scale,
    r = ±1 by the response's type. The split is exact: its completeness is 1 up to ties."""
    scale = np.asarray(scale, dtype=np.float64)
    r = np.where(np.asarray(response_refuses, dtype=bool), 1.0, -1.0) / scale
    act = policy.design(prompt_X) * policy.fit.coef[None, :] * r[:, None]
    icpt = (policy.fit.intercept - policy.threshold) * r - np.asarray(centre, dtype=np.float64) / scale
    comp = spearman(act.sum(1) + icpt, score) if len(r) > 2 else float("nan")
    return PolicyParts(act, np.zeros_like(act), icpt, comp)


def residual_shift(dl: np.ndarray, response_refuses: np.ndarray) -> np.ndarray:
    """Δℓ minus the mean Δℓ of the pairs of the same response type (the generic push of refusing or complying)."""
    dl = np.asarray(dl, dtype=np.float64)
    r = np.asarray(response_refuses, dtype=bool)
    out = dl.copy()
    for kind in (True, False):
        mask = r == kind
        if mask.sum() >= 2:
            out[mask] -= dl[mask].mean(0)
    return out


@dataclass(frozen=True)
class EffectFit:
    """A ridge of each pair's residual shift on the probes' SAE features."""

    feature_ids: np.ndarray  # (K,) the SAE features fitted
    coef: np.ndarray  # (m, K) in standardised units
    r2: np.ndarray  # (m,) share of each residual the fit explains
    design: np.ndarray  # (n, K) the standardised activations fitted on


def fit_effects(residual: np.ndarray, features: np.ndarray, feature_ids: np.ndarray, *,
                lam: float = 10.0, min_active: int = 3) -> EffectFit:
    """Ridge `residual_i ≈ X γ_i` for every pair at once (one solve), over features active on ≥ min_active probes."""
    X = np.asarray(features, dtype=np.float64)
    keep = (X > 0).sum(0) >= min_active
    X, ids = X[:, keep], np.asarray(feature_ids)[keep]
    mu, sd = X.mean(0), X.std(0)
    Xs = (X - mu) / np.where(sd > 0, sd, 1.0)
    R = np.asarray(residual, dtype=np.float64)
    Rc = R - R.mean(1, keepdims=True)
    gamma = np.linalg.solve(Xs.T @ Xs + lam * np.eye(Xs.shape[1]), Xs.T @ Rc.T).T  # (m, K)
    fitted = gamma @ Xs.T
    ss = (Rc ** 2).sum(1)
    r2 = 1.0 - ((Rc - fitted) ** 2).sum(1) / np.where(ss > 0, ss, 1.0)
    return EffectFit(ids, gamma, r2, Xs)


def harm_landing(residual: np.ndarray, harmful: np.ndarray, features: np.ndarray, *, min_active: int = 3) -> np.ndarray:
    """(m, K) how much of each pair's residual harm lands where each feature fires, within each probe label.

    With harm `h_ip = max(0, −s_p R_ip)` (less refusal on a harmful probe, more on a harmless one) and `z_Lpj` the
    feature's activation standardised among the probes of label L, `landing_ij = Σ_L Σ_{p∈L} h_ip z_Lpj / n`.
    Within a label, so that a feature which merely tells harmful requests from harmless ones (alike on every
    harmful probe) is not named for harm that lands on a few of them; a feature active on fewer than
    `min_active` probes of a label, or constant there, counts 0 in it. The pair's harm feature is the argmax.
    """
    R = np.asarray(residual, dtype=np.float64)
    X = np.asarray(features, dtype=np.float64)
    h = np.asarray(harmful, dtype=bool)
    harm = np.maximum(-signs(h)[None, :] * R, 0.0)
    out = np.zeros((R.shape[0], X.shape[1]))
    for label in (h, ~h):
        XL = X[label]
        sd = XL.std(0)
        ok = (sd > 0) & ((XL > 0).sum(0) >= min_active)
        z = np.where(ok, (XL - XL.mean(0)) / np.where(ok, sd, 1.0), 0.0)
        out += harm[:, label] @ z
    return out / max(R.shape[1], 1)


@dataclass(frozen=True)
class EffectParts:
    """A score `S_i = Σ_p W_ip Δℓ_ip` split over every fitted SAE feature through the effect fit."""

    parts: np.ndarray  # (m, K) feature j's fitted part of the score, `γ_ij Σ_p W_ip Xs_pj`
    uniform: np.ndarray  # (m,) what no feature carries: the generic push of the response type and the pair's mean shift
    completeness: float  # Spearman across pairs of (Σ_j parts + uniform) with the score


def effect_parts(fit: EffectFit, residual: np.ndarray, dl: np.ndarray, weights: np.ndarray, score: np.ndarray) -> EffectParts:
    """Δℓ = (Δℓ − R) + mean(R) + (R − mean(R)), the last part fitted as `Xs γ`: so the score is the uniform part
    `Σ_p W_ip (Δℓ − R + mean R)_ip` plus one part per feature, up to what the fit misses."""
    w = np.asarray(weights, dtype=np.float64)
    R = np.asarray(residual, dtype=np.float64)
    centred = R - R.mean(1, keepdims=True)
    parts = fit.coef * (w @ fit.design)
    uniform = np.einsum("mn,mn->m", w, np.asarray(dl, dtype=np.float64) - centred)
    comp = spearman(parts.sum(1) + uniform, score) if len(score) > 2 else float("nan")
    return EffectParts(parts, uniform, comp)


@dataclass(frozen=True)
class Interference:
    """Residual harm that lands away from the pair's own prompt, and the calibrated flag."""

    share: np.ndarray  # (m,) share of the pair's residual harm outside its neighbourhood
    robust_z: np.ndarray  # (m,) against pairs of the same response type
    flagged: np.ndarray  # (m,) bool


def interference(residual: np.ndarray, harmful: np.ndarray, neighbours: np.ndarray, response_refuses: np.ndarray,
                 z: float = 3.0) -> Interference:
    """Share of signed residual harm on probes outside the pair's neighbourhood (its `neighbours`, the probes
    `local_shift` reads); flagged when its robust z-score (median, 1.4826·MAD) among pairs of the same response
    type exceeds `z`. The neighbourhood, not a similarity cut, decides what is near: a trigger pair's prompt
    shares its phrase with the harmful probes it harms, so half of all probes by similarity would count them as near.
    """
    R = np.asarray(residual, dtype=np.float64)
    harm = np.maximum(-signs(harmful)[None, :] * R, 0.0)
    far = np.ones(R.shape, dtype=bool)
    np.put_along_axis(far, np.asarray(neighbours, dtype=np.int64), False, axis=1)
    total = np.abs(R).sum(1)
    share = (harm * far).sum(1) / np.where(total > 0, total, 1.0)
    rz = np.zeros_like(share)
    kinds = np.asarray(response_refuses, dtype=bool)
    for kind in (True, False):
        mask = kinds == kind
        if mask.sum() >= 3:
            med = np.median(share[mask])
            mad = 1.4826 * np.median(np.abs(share[mask] - med))
            rz[mask] = (share[mask] - med) / (mad if mad > 0 else max(abs(med), 1e-12))
    return Interference(share, rz, rz > z)
