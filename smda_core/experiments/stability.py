"""Stability across SAE seeds (DESIGN §5): how much of the policy and of each pair score survives a retrained SAE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smda_core.attribution import score_names
from smda_core.attribution.separation import bad_pair_auc, spearman


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
    harm_feature: np.ndarray | None = None  # (m,) each pair's named harm feature (its landing; −1: none)
    harm_decoder: np.ndarray | None = None  # (m, d_in) its decoder direction


def stability(runs: Sequence[SeedRun], is_bad: np.ndarray, harmful_prompt: np.ndarray, top: int = 10,
              kinds: np.ndarray | None = None) -> list[dict]:
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
    if all(r.harm_decoder is not None for r in runs):
        rows.extend(harm_feature_agreement(runs, kinds if kinds is not None else np.where(is_bad, "bad", "good")))
    return rows


def harm_feature_agreement(runs: Sequence[SeedRun], kinds: np.ndarray, threshold: float = 0.9) -> list[dict]:
    """Share of pairs whose named harm feature is the same direction under every pair of seeds (decoder
    |cosine| ≥ threshold), over all pairs and per kind (evaluation labels); a pair named nothing (−1) under
    some seed is not matched."""
    kinds = np.asarray(kinds).astype(str)
    matched = np.ones(len(kinds), dtype=bool)
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            ua = a.harm_decoder / np.linalg.norm(a.harm_decoder, axis=1, keepdims=True)
            ub = b.harm_decoder / np.linalg.norm(b.harm_decoder, axis=1, keepdims=True)
            matched &= (np.abs(np.einsum("md,md->m", ua, ub)) >= threshold) & (a.harm_feature >= 0) & (b.harm_feature >= 0)
    rows = [{"method": "mechanism", "score": "harm_feature_matched", "value": float(matched.mean()),
             "detail": {"threshold": threshold, "pairs": int(len(matched))}}]
    for kind in sorted(set(kinds) - {"", "None", "nan"}):
        mask = kinds == kind
        rows.append({"method": "mechanism", "score": f"harm_feature_matched:{kind}", "value": float(matched[mask].mean()),
                     "detail": {"threshold": threshold, "pairs": int(mask.sum())}})
    return rows


STABLE_SCORES = score_names.ALL


def run_stability(runtime, config, pairs, *, sae_dirs: Sequence[tuple[int, str]], progress: bool = True) -> list[SeedRun]:
    """For each (seed, SAE folder): read the probes through that SAE, fit the policy, measure and attribute the pairs."""
    from smda_core.api import attribute, measure_probes, measure_shifts
    from smda_core.model.loading import load_sae
    from smda_core.policy.fit import fit_policy

    runs = []
    for seed, path in sae_dirs:
        sae = load_sae(path=str(path))
        r = runtime.with_sae(sae)
        probes = measure_probes(r, progress=False)
        policy = fit_policy(probes, config.policy)
        s = attribute(policy, probes, measure_shifts(r, policy, pairs, progress=progress), pairs, config).pair_summary
        decoder = sae.W_dec.detach().double().cpu().numpy()
        harm = np.asarray(s["harm_feature"], dtype=np.int64) if "harm_feature" in s else None
        runs.append(SeedRun(seed, policy.feature_ids, policy.coef, decoder[policy.feature_ids],
                            policy.r2, policy.loo_r2, policy.accuracy,
                            {k: np.asarray(s[k], dtype=float) for k in STABLE_SCORES if k in s},
                            harm, decoder[np.maximum(harm, 0)] if harm is not None else None))
    return runs
