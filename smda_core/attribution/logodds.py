"""Kind-free log-odds scores of a pair (DESIGN §4 "Log-odds scores"): how its step moves refusal, in log-odds.

With ℓ = logit(refusal_prob) per probe and Δℓ its exact shift under the pair's step (re-measured),
and the sign s_p = +1 on harmful probes, −1 on harmless ones (refusing the first and answering the
second are both good), every score is a weighted sum over probes, `score_i = Σ_p W_ip · Δℓ_ip`,
with higher meaning a better pair to keep:

- `margin_shift`: mean Δℓ on harmful minus mean Δℓ on harmless probes (widens the refusal gap);
- `local_shift`: the signed shift s·Δℓ over the probes nearest the pair's own prompt (cosine over
  every SAE feature at the read position): what the pair teaches near its own request;
- `worst_group_shift`: the most negative signed shift over probe groups (categories, and clusters
  of probes that share an active SAE feature), so harm that lands on a few probes is not averaged away;
- `specific_shift`: the worst group shift of what is specific to the pair: its signed shift minus its
  projection on the generic push of its response type (the mean signed shift of the batch's pairs
  whose response also opens with a refusal, or also does not), over groups split by probe label
  (categories, and each feature cluster's harmful and harmless probes). Most of one pair's shift is
  that generic push; harm planted on a few probes (a phrase, a category) is what remains;
- `harm_shift` (the recommended one): the worse of `local_shift` and `specific_shift`, each in units of its
  robust spread over the batch's pairs of the same response type (1.4826 × MAD around the type's median).
  The local shift sees harm near the pair's own request (the two turn-1 kinds), the specific shift harm
  that lands on a few probes elsewhere (a trigger phrase); the scale makes the two comparable. Only the
  scale is taken from the batch, so the score stays a weighted sum of Δℓ (its weights are the chosen
  score's over that scale) and its mechanism parts stay exact;
- `screen_consistency` (forward only): the policy's predicted refusal for the pair's prompt against
  whether its response opens with a refusal; negative when the response contradicts the policy;
- `keep_score`: the worse of `harm_shift` and `screen_consistency`, each as a robust z-score among the
  batch's pairs of the same response type ((value − the type's median) / its robust spread): how far below
  a typical pair of its type the pair stands. The two are different evidence of a bad pair: what its step
  does to the probes (a trigger pair's harm lands far from its own prompt, where no reading of the prompt
  sees it), and what its own text says against the policy (a pair that complies with a request the policy
  would refuse, or the reverse, even when its step's harm is spread thin). A pair is as bad as its worse
  evidence, and a low outlier in either is a low outlier of `keep_score`.

No score reads a pair's `kind`, `harmful` label or category. The probe weights W are returned too:
the mechanism (per-feature parts) and the gradient tier reuse them. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smda_core.attribution import score_names
from smda_core.errors import InputError

SCORES = score_names.LOGODDS
MIN_TYPE_PAIRS = 5  # pairs of a response type needed to estimate its generic push


def delta_logit(p_base: np.ndarray, dP: np.ndarray) -> np.ndarray:
    """Exact Δℓ = logit(p + Δp) − logit(p), (m, n), with p clipped away from 0 and 1 by 1e-12."""
    p0 = np.clip(np.asarray(p_base, dtype=np.float64), 1e-12, 1 - 1e-12)
    p1 = np.clip(p0[None, :] + np.asarray(dP, dtype=np.float64), 1e-12, 1 - 1e-12)
    return (np.log(p1) - np.log(p0)) - (np.log1p(-p1) - np.log1p(-p0))


def signs(harmful: np.ndarray) -> np.ndarray:
    """+1 on harmful probes (more refusal is good), −1 on harmless ones."""
    return np.where(np.asarray(harmful, dtype=bool), 1.0, -1.0)


GROUP_MIN_SIZE = 8  # probes a group needs before its mean shift counts


@dataclass(frozen=True)
class ProbeGroups:
    """Groups of probes a pair's harm can land on: categories and clusters sharing an active SAE feature."""

    names: list[str]
    masks: np.ndarray  # (g, n) bool

    @classmethod
    def build(cls, category: np.ndarray, features: np.ndarray, feature_ids: np.ndarray, min_size: int | None = None,
              split: np.ndarray | None = None) -> ProbeGroups:
        """`features` (n, K) activations of every SAE feature (ids `feature_ids`); a feature active on ≥ min_size
        probes (and not on all of them) makes a cluster. With `split` (n,) bool, every group is cut in two by
        it (harmful and harmless probes apart) and halves under min_size are dropped. `min_size` defaults to 8,
        fewer (down to 3) when there are under 96 probes, so that a small probe set still has groups."""
        category = np.asarray(category).astype(str)
        if min_size is None:
            min_size = min(GROUP_MIN_SIZE, max(3, len(category) // 12))
        names, masks = [], []
        for c in np.unique(category):
            names.append(f"category:{c}")
            masks.append(category == c)
        active = np.asarray(features) > 0
        counts = active.sum(0)
        for j in np.flatnonzero((counts >= min_size) & (counts < active.shape[0])):
            names.append(f"feature:{int(feature_ids[j])}")
            masks.append(active[:, j])
        if split is not None:
            cut = np.asarray(split, dtype=bool)
            halves = [(f"{name}|{label}", mask & side) for name, mask in zip(names, masks)
                      for label, side in (("harmful", cut), ("harmless", ~cut))]
            names = [name for name, mask in halves if mask.sum() >= min_size]
            masks = [mask for _, mask in halves if mask.sum() >= min_size]
        return cls(names, np.asarray(masks, dtype=bool).reshape(len(names), len(category)))  # (0, n) when none is left


def nearest_probes(pair_features: np.ndarray, probe_features: np.ndarray, k: int) -> np.ndarray:
    """Indices (m, k) of the k probes most similar to each pair's prompt by cosine over all SAE features.

    A pair with no active feature gets the k probes of largest norm (a deterministic fallback); ties go
    to the lower probe index.
    """
    a = np.asarray(pair_features, dtype=np.float64)
    b = np.asarray(probe_features, dtype=np.float64)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"pair and probe features must share their width; got {a.shape[1]} and {b.shape[1]}", field="features")
    k = min(int(k), b.shape[0])
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    sims = an @ bn.T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


@dataclass(frozen=True)
class LogOddsScores:
    """Each score per pair (m,), its probe weights (m, n), and the group where the worst shift lands."""

    values: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    worst_group: list[str]
    specific_group: list[str]


def logodds_scores(dl: np.ndarray, harmful: np.ndarray, neighbours: np.ndarray, groups: ProbeGroups,
                   split_groups: ProbeGroups, response_refuses: np.ndarray) -> LogOddsScores:
    """margin_shift, local_shift, worst_group_shift and specific_shift of m pairs from their Δℓ (m, n).

    Args:
        dl: exact log-odds shifts, (m, n).
        harmful: (n,) probe labels.
        neighbours: (m, k) probe indices nearest each pair's prompt (`nearest_probes`).
        groups: probe groups for the worst-group score.
        split_groups: label-pure probe groups for the specific score (`ProbeGroups.build(..., split=harmful)`).
        response_refuses: (m,) whether each pair's response opens with a refusal (its response type).
    """
    dl = np.asarray(dl, dtype=np.float64)
    m, n = dl.shape
    h = np.asarray(harmful, dtype=bool)
    if not h.any() or h.all():
        raise InputError("log-odds scores need both harmful and harmless probes", field="harmful")
    s = signs(h)
    margin = np.where(h, 1.0 / h.sum(), -1.0 / (~h).sum())
    weights = {"margin_shift": np.broadcast_to(margin, (m, n)).copy()}
    local = np.zeros((m, n))
    rows = np.repeat(np.arange(m), neighbours.shape[1])
    local[rows, neighbours.reshape(-1)] = 1.0 / neighbours.shape[1]
    weights["local_shift"] = local * s[None, :]
    if not len(groups.names):
        raise InputError("no group of harmful or of harmless probes is large enough for the specific shift: "
                         "it needs more probes per category", field="probes")
    group_w = groups.masks / groups.masks.sum(1, keepdims=True)  # (g, n) mean over each group
    per_group = (dl * s[None, :]) @ group_w.T  # (m, g) signed shift per group
    worst = np.argmin(per_group, axis=1)
    weights["worst_group_shift"] = group_w[worst] * s[None, :]
    specific, where = specific_weights(dl * s[None, :], split_groups, response_refuses)
    weights["specific_shift"] = specific * s[None, :]
    values = {name: np.einsum("mn,mn->m", w, dl) for name, w in weights.items()}
    weights["harm_shift"] = harm_weights(values, weights, response_refuses)
    values["harm_shift"] = np.einsum("mn,mn->m", weights["harm_shift"], dl)
    return LogOddsScores(values, weights, [groups.names[g] for g in worst], [split_groups.names[g] for g in where])


HARM_PARTS = ("local_shift", "specific_shift")  # the scores harm_shift takes the worse of


def type_scale(values: np.ndarray, response_refuses: np.ndarray) -> np.ndarray:
    """(m,) the robust spread of a score over the pairs of each pair's response type (see `standardise`)."""
    return standardise(values, response_refuses).scale


def harm_weights(values: dict[str, np.ndarray], weights: dict[str, np.ndarray], response_refuses: np.ndarray) -> np.ndarray:
    """Probe weights (m, n) of `harm_shift`: per pair, the weights of whichever of HARM_PARTS is lower in units
    of its type's spread, divided by that spread."""
    scales = [type_scale(values[name], response_refuses) for name in HARM_PARTS]
    pick = np.argmin(np.stack([values[name] / sc for name, sc in zip(HARM_PARTS, scales)]), axis=0)  # (m,)
    out = np.empty_like(weights[HARM_PARTS[0]])
    for j, (name, sc) in enumerate(zip(HARM_PARTS, scales)):
        rows = pick == j
        out[rows] = weights[name][rows] / sc[rows, None]
    return out


@dataclass(frozen=True)
class Standardised:
    """A score as a robust z-score within response types: (value − centre) / scale, each (m,)."""

    centre: np.ndarray
    scale: np.ndarray

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.centre) / self.scale


@dataclass(frozen=True)
class KeepScore:
    """`keep_score` per pair (m,), whether its contradiction of the policy is the worse evidence (m,), and how
    each evidence was standardised (its mechanism parts are divided by the scale, the centre taken from the
    uniform part)."""

    values: np.ndarray
    contradiction: np.ndarray
    harm: Standardised
    consistency: Standardised


def standardise(values: np.ndarray, response_refuses: np.ndarray) -> Standardised:
    """Centre and spread of a score over the pairs of each pair's response type: the type's median and 1.4826 ×
    its median absolute deviation (a type with fewer than MIN_TYPE_PAIRS pairs uses every pair; a zero MAD falls
    back to the standard deviation, then to 1)."""
    v = np.asarray(values, dtype=np.float64)
    r = np.asarray(response_refuses, dtype=bool)
    centre, scale = np.empty_like(v), np.empty_like(v)
    for kind in (True, False):
        mask = r == kind
        if not mask.any():
            continue
        ref = v[mask] if mask.sum() >= MIN_TYPE_PAIRS else v
        centre[mask] = np.median(ref)
        spread = 1.4826 * np.median(np.abs(ref - np.median(ref)))
        scale[mask] = spread if spread > 0 else (float(ref.std()) if ref.std() > 0 else 1.0)
    return Standardised(centre, scale)


def keep_score(harm: np.ndarray, consistency: np.ndarray, response_refuses: np.ndarray) -> KeepScore:
    """The worse of `harm_shift` and `screen_consistency`, each standardised within response types. Only a
    centre and a scale are taken from the batch, so each pair's value is one of its two scores moved and
    divided by numbers, and its mechanism is that score's parts, moved and divided alike.

    The contradiction evidence counts only where the response contradicts the policy (`screen_consistency`
    < 0). A pair the policy agrees with is judged by its effect alone: how sure the policy is of it says
    nothing against it, and that certainty changes with the SAE the policy reads."""
    h, c = standardise(harm, response_refuses), standardise(consistency, response_refuses)
    hz, cz = h(harm), c(consistency)
    contradiction = (np.asarray(consistency, dtype=np.float64) < 0) & (cz < hz)
    return KeepScore(np.where(contradiction, cz, hz), contradiction, h, c)


def generic_push(signed: np.ndarray, response_refuses: np.ndarray) -> np.ndarray:
    """(m, n): for each pair, the mean signed shift of the pairs of its response type (the push every pair
    that refuses, or every pair that complies, gives). A type with fewer than MIN_TYPE_PAIRS pairs in the
    batch takes the mean over all pairs."""
    r = np.asarray(response_refuses, dtype=bool)
    overall = signed.mean(0)
    push = np.empty_like(signed)
    for kind in (True, False):
        mask = r == kind
        push[mask] = signed[mask].mean(0) if mask.sum() >= MIN_TYPE_PAIRS else overall
    return push


def specific_weights(signed: np.ndarray, groups: ProbeGroups, response_refuses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (m, n) on the signed shift such that `Σ_p W_ip signed_ip` is the pair's specific shift, and the
    index of the group each pair's specific harm lands on.

    The residual `signed_i − a_i μ` (with `a_i = signed_i·μ / μ·μ`, μ its type's generic push) is linear in
    `signed_i`, so its mean over group g is `signed_i · (w_g − μ (μ·w_g)/(μ·μ))`; the worst group is chosen
    per pair on the residual."""
    if not len(groups.names):
        raise InputError("no group of harmful or of harmless probes is large enough for the specific shift: "
                         "it needs more probes per category", field="probes")
    group_w = groups.masks / groups.masks.sum(1, keepdims=True)  # (g, n)
    mu = generic_push(signed, response_refuses)  # (m, n)
    mu_sq = np.maximum(np.einsum("mn,mn->m", mu, mu), 1e-300)
    coeff = np.einsum("mn,mn->m", signed, mu) / mu_sq  # a_i
    per_group = signed @ group_w.T - coeff[:, None] * (mu @ group_w.T)  # (m, g) residual mean per group
    worst = np.argmin(per_group, axis=1)
    w = group_w[worst]  # (m, n)
    return w - mu * (np.einsum("mn,mn->m", mu, w) / mu_sq)[:, None], worst


def screen_consistency(predicted: np.ndarray, threshold: float, response_refuses: np.ndarray) -> np.ndarray:
    """Forward only: (+1 if the response refuses else −1) × (policy's predicted behaviour of the prompt − threshold).

    Positive when the response does what the policy expects for that prompt; negative when it contradicts it.
    """
    r = np.where(np.asarray(response_refuses, dtype=bool), 1.0, -1.0)
    return r * (np.asarray(predicted, dtype=np.float64) - float(threshold))
