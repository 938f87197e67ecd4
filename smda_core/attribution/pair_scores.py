"""The kind-free scores of a batch of pairs, the recommended `score`, their mechanism rows and calibrated interference.

Inputs are what the shift step measured (`PairShifts`: Δℓ via ΔP, ΔZ, the pair's response type and its
prompt's SAE features), the policy and its Δβ, and the probe readout (labels, every SAE feature). The
output is columns for `pair_summary` and rows for `pair_mechanism` (DESIGN §4, §6). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smda_core.attribution import logodds, mechanism
from smda_core.attribution.separation import spearman
from smda_core.policy.fit import Policy

N_NEIGHBOURS = 15
N_NAMED = 5  # features named per pair and score
N_EFFECT_ROWS = 10  # effect-fit parts stored per pair for the recommended score (the rest summed in one row)


@dataclass(frozen=True)
class PairScores:
    summary: dict[str, Any]  # column → (m,) values, added to pair_summary
    mechanism: dict[str, Any]  # pair_mechanism columns
    completeness: dict[str, float]  # score → Spearman of the summed policy parts with the score
    needs_delta_x: np.ndarray  # (rows,) a row whose activation part is read off per-probe ΔX (policy splits)

    def first_order(self) -> dict[str, list]:
        """The mechanism rows a first-order tier can stand by: without per-probe ΔX a policy split's activation
        parts are unknown, while the effect fit, the harm landing and an exact contradiction split need none."""
        keep = np.flatnonzero(~self.needs_delta_x)
        return {c: [v[i] for i in keep] for c, v in self.mechanism.items()}


def dense_features(coo: tuple[np.ndarray, np.ndarray, np.ndarray], rows: int, width: int) -> np.ndarray:
    """(rows, width) activations from (row, feature, value) COO."""
    out = np.zeros((rows, width))
    i, f, v = (np.asarray(a) for a in coo)
    keep = f < width
    out[i[keep].astype(np.int64), f[keep].astype(np.int64)] = v[keep]
    return out


def score_pairs(policy: Policy, pair_ids: np.ndarray, dZ: np.ndarray, p_base: np.ndarray, dP: np.ndarray,
                response_refuses: np.ndarray, prompt_X: np.ndarray, pair_features: np.ndarray, probe_features: np.ndarray,
                harmful: np.ndarray, category: np.ndarray, *, recommended: str,
                effect_features: np.ndarray | None = None) -> PairScores:
    """Every kind-free score, the recommended `score`, policy and effect-fit mechanism, calibrated interference.

    Shapes: dZ (m, n, k) design units, p_base (n,), dP (m, n),
    response_refuses (m,), prompt_X (m, k) raw policy features of each pair's prompt, pair_features (m, K) and
    probe_features (n, K) over every SAE feature at the read position; effect_features (n, K) each feature's
    strongest activation over a probe's request tokens (the effect fit's design; the read position if None).
    """
    m = len(pair_ids)
    feature_ids = np.arange(probe_features.shape[1])
    dl = logodds.delta_logit(p_base, dP)
    neighbours = logodds.nearest_probes(pair_features, probe_features, N_NEIGHBOURS)
    groups = logodds.ProbeGroups.build(category, probe_features, feature_ids)
    split_groups = logodds.ProbeGroups.build(category, probe_features, feature_ids, split=harmful)
    scores = logodds.logodds_scores(dl, harmful, neighbours, groups, split_groups, response_refuses)
    values = dict(scores.values)
    values["screen_consistency"] = logodds.screen_consistency(policy.predict(prompt_X), policy.threshold, response_refuses)
    keep = logodds.keep_score(values["harm_shift"], values["screen_consistency"], response_refuses)
    values["keep_score"] = keep.values
    lp = mechanism.logodds_policy(policy, p_base, dZ, dl)
    parts = {name: mechanism.policy_parts(policy, lp, dZ, scores.weights[name], values[name]) for name in logodds.SCORES}
    contradiction = mechanism.consistency_parts(policy, prompt_X, response_refuses, keep.consistency.centre,
                                                keep.consistency.scale, keep.consistency(values["screen_consistency"]))
    residual = mechanism.residual_shift(dl, response_refuses)
    design = probe_features if effect_features is None else effect_features
    fit = mechanism.fit_effects(residual, design, np.arange(design.shape[1]))
    harm_effect = mechanism.effect_parts(fit, residual, dl, scores.weights["harm_shift"], values["harm_shift"])
    effect = (harm_effect if recommended == "harm_shift"
              else mechanism.effect_parts(fit, residual, dl, scores.weights[recommended], values[recommended])
              if recommended in scores.weights else None)
    inter = mechanism.interference(residual, harmful, neighbours, response_refuses)
    landing = mechanism.harm_landing(residual, harmful, design)
    # −1 where the pair's harm lands nowhere (no positive landing): no feature is named for it
    harm_feature = np.where(landing.max(1) > 0, np.argmax(landing, axis=1), -1) if landing.size else np.full(m, -1)
    summary = {**values, "worst_group": scores.worst_group, "specific_group": scores.specific_group, "score": values[recommended],
               "interference": inter.share, "interference_z": inter.robust_z, "flagged": inter.flagged,
               "harm_feature": harm_feature.astype(np.int64), "effect_fit_r2": fit.r2,
               "response_refuses": np.asarray(response_refuses, dtype=bool)}
    rows = _mechanism_rows(pair_ids, policy.feature_ids, parts, landing)
    completeness = {name: p.completeness for name, p in parts.items()}
    if effect is not None:
        _effect_rows(rows, pair_ids, recommended, fit.feature_ids, effect)
        completeness[f"{recommended}/effect-fit"] = effect.completeness
    completeness["keep_score"] = _keep_rows(rows, pair_ids, keep, policy.feature_ids, contradiction, parts["harm_shift"],
                                            fit.feature_ids, harm_effect)
    return PairScores(summary, rows, completeness, np.asarray(rows.pop("needs_delta_x"), dtype=bool))


def _keep_rows(cols: dict[str, list], pair_ids: np.ndarray, keep: logodds.KeepScore, policy_features: np.ndarray,
               contradiction: mechanism.PolicyParts, harm_policy: mechanism.PolicyParts, effect_features: np.ndarray,
               harm: mechanism.EffectParts) -> float:
    """`keep_score`'s rows, each split standardised like the evidence it explains. A pair that its contradiction of
    the policy condemns gets that split over the policy's features (exact); any other pair gets its `harm_shift`'s
    two splits, over the policy's features and over every SAE feature (effect fit), as a log-odds score does.
    Returns the completeness: the Spearman across pairs of each pair's summed parts (the effect fit where a pair
    has one) with `keep_score`."""
    c = np.asarray(keep.contradiction, dtype=bool)
    scale = keep.harm.scale
    policy = mechanism.PolicyParts(
        np.where(c[:, None], contradiction.activation, harm_policy.activation / scale[:, None]),
        np.where(c[:, None], contradiction.weight, harm_policy.weight / scale[:, None]),
        np.where(c, contradiction.intercept, keep.harm(harm_policy.intercept)), float("nan"))
    _policy_rows(cols, pair_ids, "keep_score", policy_features, policy, needs_delta_x=~c)
    harm = mechanism.EffectParts(harm.parts / scale[:, None], keep.harm(harm.uniform), harm.completeness)
    _effect_rows(cols, pair_ids[~c], "keep_score", effect_features,
                 mechanism.EffectParts(harm.parts[~c], harm.uniform[~c], harm.completeness))
    summed = np.where(c, contradiction.total.sum(1) + contradiction.intercept, harm.parts.sum(1) + harm.uniform)
    return spearman(summed, keep.values) if len(c) > 2 else float("nan")


def _mechanism_rows(pair_ids: np.ndarray, policy_features: np.ndarray, parts: dict[str, mechanism.PolicyParts],
                    landing: np.ndarray) -> dict[str, list]:
    """pair_mechanism: every policy feature's parts of each score, and the features where each pair's harm lands
    (score 'harm', source 'landing'; weight_part is minus the landing, so the most harmful is the most negative)."""
    cols: dict[str, list] = {c: [] for c in ("pair_id", "score", "feature_id", "activation_part", "weight_part", "share",
                                             "rank", "source", "needs_delta_x")}
    for name, p in parts.items():
        _policy_rows(cols, pair_ids, name, policy_features, p)
    norm = np.abs(landing).sum(1, keepdims=True)
    for i, pid in enumerate(pair_ids):
        for r, j in enumerate(np.argsort(-landing[i], kind="stable")[:N_NAMED]):
            _append(cols, pid, "harm", int(j), float("nan"), -landing[i, j],
                    -landing[i, j] / norm[i, 0] if norm[i, 0] > 0 else 0.0, r + 1, "landing", False)
    return cols


def _policy_rows(cols: dict[str, list], pair_ids: np.ndarray, score: str, policy_features: np.ndarray,
                 p: mechanism.PolicyParts, needs_delta_x: np.ndarray | bool = True) -> None:
    """One score's split over the policy's features: a row per pair and feature, ranked by |part|, and the
    intercept's part (feature −1). `needs_delta_x` (per pair) marks splits read off per-probe ΔX."""
    dx = np.broadcast_to(np.asarray(needs_delta_x, dtype=bool), (len(pair_ids),))
    total = p.total
    norm = np.abs(total).sum(1, keepdims=True)
    share = total / np.where(norm > 0, norm, 1.0)
    rank = np.argsort(np.argsort(-np.abs(total), axis=1, kind="stable"), axis=1, kind="stable") + 1
    for i, pid in enumerate(pair_ids):
        for j, f in enumerate(policy_features):
            _append(cols, pid, score, int(f), p.activation[i, j], p.weight[i, j], share[i, j], int(rank[i, j]), "policy",
                    bool(dx[i]))
        _append(cols, pid, score, -1, 0.0, p.intercept[i], float("nan"), 0, "policy-intercept", bool(dx[i]))


def _effect_rows(cols: dict[str, list], pair_ids: np.ndarray, score: str, feature_ids: np.ndarray,
                 effect: mechanism.EffectParts) -> None:
    """The recommended score's effect-fit split: its N_EFFECT_ROWS largest feature parts, the other features'
    parts summed (feature −2) and the uniform part (feature −1), so that a pair's rows sum to its split."""
    norm = np.abs(effect.parts).sum(1) + np.abs(effect.uniform)
    for i, pid in enumerate(pair_ids):
        share = (lambda v: v / norm[i] if norm[i] > 0 else 0.0)
        order = np.argsort(-np.abs(effect.parts[i]), kind="stable")
        for r, j in enumerate(order[:N_EFFECT_ROWS]):
            _append(cols, pid, score, int(feature_ids[j]), float("nan"), effect.parts[i, j], share(effect.parts[i, j]),
                    r + 1, "effect-fit", False)
        rest = float(effect.parts[i, order[N_EFFECT_ROWS:]].sum())
        _append(cols, pid, score, -2, float("nan"), rest, share(rest), 0, "effect-fit-other", False)
        _append(cols, pid, score, -1, float("nan"), effect.uniform[i], share(effect.uniform[i]), 0, "effect-fit-uniform",
                False)


def _append(cols: dict[str, list], *values) -> None:
    for key, value in zip(cols, values):
        cols[key].append(value)
