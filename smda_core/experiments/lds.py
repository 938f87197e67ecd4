"""Counterfactual agreement (LDS, DESIGN §5): do the attributions add up to what retraining does?

LDS: fine-tune on random subsets of the pairs, measure the actual change of β (refit on the
re-measured probes, same features, units and λ) and of the mean harmful refusal, and rank-
correlate them across subsets with the sums of the subsets' per-pair attributions.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smda_core.attribution.separation import spearman
from smda_core.attribution.pathways import delta_beta_refit
from smda_core.policy.fit import Policy




@dataclass(frozen=True)
class SubsetEffect:
    """What fine-tuning on one subset actually did: Δβ (k,) and the mean change of y on harmful probes."""

    members: tuple[str, ...]
    delta_beta: np.ndarray
    dy_harmful: float
    margin: float = float("nan")  # change of the log-odds margin: mean Δℓ on harmful minus on harmless probes


def actual_effect(policy: Policy, members: Sequence[str], X_new: np.ndarray, y_new: np.ndarray, harmful: np.ndarray,
                  p_base: np.ndarray | None = None, p_new: np.ndarray | None = None) -> SubsetEffect:
    """Δβ of refitting the policy ridge on the re-measured probes (same features, units, λ), the mean change of y
    on harmful probes and, given refusal_prob before and after, the change of the log-odds margin."""
    from smda_core.attribution.logodds import delta_logit

    dZ = policy.shift(X_new - policy.X)
    dY = y_new - policy.y
    total = delta_beta_refit(policy.Z, policy.fit, dZ, dY).total
    margin = float("nan")
    if p_base is not None and p_new is not None:
        dl = delta_logit(p_base, (np.asarray(p_new) - np.asarray(p_base))[None])[0]
        margin = float(dl[harmful].mean() - dl[~harmful].mean())
    return SubsetEffect(tuple(members), np.asarray(total), float(dY[harmful].mean()), margin)


def lds(effects: Sequence[SubsetEffect], per_pair: dict[str, np.ndarray], quantity: str = "dy_harmful") -> dict:
    """Spearman across subsets between actual effects and summed per-pair predictions.

    `per_pair` maps pair id → prediction: a (k,) Δβ vector, or a scalar for the subset effect `quantity`
    (`dy_harmful`, the harmful refusal change, or `margin`, the log-odds margin change).
    Returns per-feature Spearman, their mean, and one pooled value for vectors; one value for scalars.
    """
    preds = np.array([sum(per_pair[m] for m in e.members) for e in effects])
    if preds.ndim == 1:
        return {"spearman": spearman([getattr(e, quantity) for e in effects], preds)}
    actual = np.stack([e.delta_beta for e in effects])
    per_feature = np.array([spearman(actual[:, j], preds[:, j]) for j in range(actual.shape[1])])
    return {"spearman": float(np.nanmean(per_feature)), "per_feature": per_feature.tolist(),
            "pooled": spearman(actual.ravel(), preds.ravel())}


@dataclass(frozen=True)
class LdsResult:
    """One LDS run: a row per (method, score) with its Spearman across subsets and details."""

    rows: list[dict]
    subsets: int
    fraction: float

    def table(self, run_id: str):
        """The `validation` table rows of this run."""
        return validation_table("lds", run_id, [{**r, "n": self.subsets} for r in self.rows])


def validation_table(check: str, run_id: str, rows: list[dict]):
    """Rows of the warehouse's `validation` table (check, method, score, n, spearman, detail, run_id, created_at)."""
    import pyarrow as pa

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return pa.table({"check": [check] * len(rows), "method": [r["method"] for r in rows], "score": [r["score"] for r in rows],
                     "n": pa.array([int(r["n"]) for r in rows], pa.int64()), "spearman": [float(r["spearman"]) for r in rows],
                     "detail": [json.dumps(r["detail"]) for r in rows], "run_id": [run_id] * len(rows),
                     "created_at": pa.array([now] * len(rows), pa.timestamp("us"))})


def run_lds(runtime, policy: Policy, harmful: np.ndarray, pairs: dict[str, tuple[str, str]],
            attributions: dict[str, dict[str, np.ndarray]], dy_harmful: dict[str, dict[str, float]], *, subsets: int, fraction: float,
            settings, seconds_per_pair: float, peer: dict | None = None, progress: bool = True,
            margin: dict[str, dict[str, float]] | None = None) -> LdsResult:
    """Fine-tune on `subsets` random subsets of `pairs` (id → prompt, response) and rank-correlate the actual
    change of β and of harmful refusal with the summed per-pair attributions (`attributions`: method → id → Δβ)
    and each tier's `dy_harmful` (method → id → value, like `margin`); a peer's scalar scores (`peer`: name → {scores, seconds}) on the same subsets."""
    from tqdm.auto import tqdm

    from smda_core.errors import SMDAError
    from smda_core.experiments.curation import retrain

    if not 0 < fraction < 1 or subsets < 3:
        raise SMDAError("lds needs --subsets ≥ 3 and 0 < --fraction < 1")
    ids = sorted(pairs)
    rng = np.random.default_rng(settings.seed)
    size = max(1, int(round(fraction * len(ids))))
    effects = []
    _, _, p_base = runtime.read(feature_ids=policy.feature_ids)
    for s in tqdm(range(subsets), desc="LDS subsets", disable=not progress):
        members = sorted(rng.choice(ids, size=size, replace=False).tolist())
        tuned = retrain(runtime.model, runtime.tokenizer, [pairs[m] for m in members], settings.replace(seed=settings.seed + s))
        r, y_new, p_new = runtime.read(tuned, feature_ids=policy.feature_ids)
        effects.append(actual_effect(policy, members, r.dense, y_new, harmful, p_base, p_new))
        del tuned
    rows = []
    for method, preds in sorted(attributions.items()):
        res = lds(effects, preds)
        rows.append({"method": method, "score": "delta_beta", "spearman": res["spearman"],
                     "detail": {"fraction": fraction, "pooled": res["pooled"], "per_feature": res["per_feature"]}})
    for method, preds in sorted(dy_harmful.items()):  # the shift each tier gives (measured by exact, predicted by gradient)
        rows.append({"method": method, "score": "dy_harmful", "spearman": lds(effects, preds)["spearman"],
                     "detail": {"fraction": fraction, "seconds_per_pair": seconds_per_pair}})
    for method, preds in sorted((margin or {}).items()):  # each tier's margin_shift against the actual margin change
        rows.append({"method": method, "score": "margin", "spearman": lds(effects, preds, "margin")["spearman"],
                     "detail": {"fraction": fraction}})
    for name, p in (peer or {}).items():
        rows.append({"method": name, "score": "dy_harmful", "spearman": lds(effects, p["scores"])["spearman"],
                     "detail": {"fraction": fraction, "seconds_per_pair": p["seconds"]}})
        if "margin" in p:
            rows.append({"method": name, "score": "margin", "spearman": lds(effects, p["margin"], "margin")["spearman"],
                         "detail": {"fraction": fraction, "seconds_per_pair": p["seconds"]}})
    return LdsResult(rows, subsets, fraction)
