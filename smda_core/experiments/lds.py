"""Counterfactual agreement (LDS) and stability across SAE seeds (DESIGN §5).

LDS: fine-tune on random subsets of the pairs, measure the actual change of β (refit on the
re-measured probes, same features, units and λ) and of the mean harmful refusal, and rank-
correlate them across subsets with the sums of the subsets' per-pair attributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smda_core.attribution.separation import bad_pair_auc, spearman
from smda_core.attribution.pathways import delta_beta_refit
from smda_core.policy.fit import Policy




@dataclass(frozen=True)
class SubsetEffect:
    """What fine-tuning on one subset actually did: Δβ (k,) and the mean change of y on harmful probes."""

    members: tuple[str, ...]
    delta_beta: np.ndarray
    dy_harmful: float


def actual_effect(policy: Policy, members: Sequence[str], X_new: np.ndarray, y_new: np.ndarray, harmful: np.ndarray) -> SubsetEffect:
    """Δβ of refitting the policy ridge on the re-measured probes (same features, units, λ)."""
    dZ = policy.shift(X_new - policy.X)
    dY = y_new - policy.y
    total = delta_beta_refit(policy.Z, policy.fit, dZ, dY).total
    return SubsetEffect(tuple(members), np.asarray(total), float(dY[harmful].mean()))


def lds(effects: Sequence[SubsetEffect], per_pair: dict[str, np.ndarray]) -> dict:
    """Spearman across subsets between actual effects and summed per-pair predictions.

    `per_pair` maps pair id → prediction: a (k,) Δβ vector, or a scalar (harmful refusal change).
    Returns per-feature Spearman, their mean, and one pooled value for vectors; one value for scalars.
    """
    preds = np.array([sum(per_pair[m] for m in e.members) for e in effects])
    if preds.ndim == 1:
        return {"spearman": spearman([e.dy_harmful for e in effects], preds)}
    actual = np.stack([e.delta_beta for e in effects])
    per_feature = np.array([spearman(actual[:, j], preds[:, j]) for j in range(actual.shape[1])])
    return {"spearman": float(np.nanmean(per_feature)), "per_feature": per_feature.tolist(),
            "pooled": spearman(actual.ravel(), preds.ravel())}


def matched_cosines(dec_a: np.ndarray, dec_b: np.ndarray) -> np.ndarray:
    """For each decoder direction of A (rows), the best |cosine| with any direction of B."""
    a = dec_a / np.linalg.norm(dec_a, axis=1, keepdims=True)
    b = dec_b / np.linalg.norm(dec_b, axis=1, keepdims=True)
    return np.abs(a @ b.T).max(axis=1)


def auc_spread(scores_by_seed: Sequence[np.ndarray], is_bad: np.ndarray, mask: np.ndarray) -> tuple[float, list[float]]:
    """Spread (max − min) of the bad-pair AUC of one score across seeds, within one prompt kind."""
    aucs = [bad_pair_auc(s[mask], is_bad[mask]) for s in scores_by_seed]
    return float(max(aucs) - min(aucs)), [float(a) for a in aucs]


@dataclass(frozen=True)
class SeedRun:
    """One SAE seed's policy and per-pair scores."""

    seed: int
    feature_ids: np.ndarray
    coef: np.ndarray
    decoder: np.ndarray  # (k, d_in) decoder directions of the policy features
    r2: float
    loo_r2: float
    accuracy: float
    scores: dict[str, np.ndarray]  # score name → (m,) per pair, same pair order in every run


def stability(runs: Sequence[SeedRun], is_bad: np.ndarray, harmful_prompt: np.ndarray, top: int = 10) -> list[dict]:
    """Agreement across SAE seeds: policy (decoder-matched features, top-feature overlap, R²/accuracy spread)
    and each per-pair score (mean pairwise Spearman, spread of the bad-pair AUC per prompt kind)."""
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]]
    rows = []
    cos = [float(matched_cosines(a.decoder, b.decoder).mean()) for a, b in pairs]
    rows.append({"method": "policy", "score": "matched_decoder_cosine", "value": float(np.mean(cos)), "detail": {"pairwise": cos}})

    def top_dirs(r: SeedRun) -> np.ndarray:
        return r.decoder[np.argsort(-np.abs(r.coef), kind="stable")[:top]]

    overlap = [float((matched_cosines(top_dirs(a), top_dirs(b)) > 0.9).mean()) for a, b in pairs]
    rows.append({"method": "policy", "score": f"top{top}_overlap", "value": float(np.mean(overlap)), "detail": {"pairwise": overlap}})
    for name in ("r2", "loo_r2", "accuracy"):
        vals = [getattr(r, name) for r in runs]
        rows.append({"method": "policy", "score": f"{name}_spread", "value": float(max(vals) - min(vals)), "detail": {"values": vals}})
    for score in runs[0].scores:
        rho = [spearman(a.scores[score], b.scores[score]) for a, b in pairs]
        detail = {"pairwise": rho}
        for kind, mask in (("harmful", harmful_prompt), ("harmless", ~harmful_prompt)):
            if is_bad[mask].any() and (~is_bad[mask]).any():
                spread, aucs = auc_spread([r.scores[score] for r in runs], is_bad, mask)
                detail[f"auc_{kind}"] = aucs
                detail[f"auc_spread_{kind}"] = spread
        rows.append({"method": "pair_score", "score": score, "value": float(np.nanmean(rho)), "detail": detail})
    return rows
