"""`smda validate lds`: counterfactual agreement of the stored attributions with retrained subsets."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import numpy as np

from smda_assets.resources import SMDAResource


def run_lds(config_path: str | None, warehouse_path: str | None, *, subsets: int = 8, fraction: float = 0.5,
            peer: bool = True, progress: bool = True) -> "pa.Table":  # noqa: F821
    """Fine-tune on `subsets` random subsets, compare actual Δβ / harmful refusal change with summed attributions."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    from smda_core.experiments import curation
    from smda_core.experiments import lds as validation
    from smda_core.api import load_world
    from smda_core.errors import SMDAError
    from smda_core.model.runtime import behaviour_from_logp, read_probes
    from smda_core.store.query import query

    if not 0 < fraction < 1 or subsets < 3:
        raise SMDAError("lds needs --subsets ≥ 3 and 0 < --fraction < 1")
    smda = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    cfg = smda.config()
    wh = smda.warehouse
    world = load_world(cfg, progress=False)
    probes, policy = smda.load("probe_scores"), smda.load("policy")
    pairs = query(wh, "SELECT pair_id, prompt, response FROM smda.v_sft_pairs ORDER BY pair_id")
    ids = pairs["pair_id"].to_pylist()
    by_id = dict(zip(ids, zip(pairs["prompt"].to_pylist(), pairs["response"].to_pylist())))
    attribution = query(wh, "SELECT pair_id, feature_id, method, delta_beta FROM smda.v_pair_attribution")
    col = {f: j for j, f in enumerate(policy.feature_ids.tolist())}
    per_method: dict[str, dict[str, np.ndarray]] = {}
    for pid, fid, method, db in zip(*(attribution[c].to_pylist() for c in ("pair_id", "feature_id", "method", "delta_beta"))):
        per_method.setdefault(method, {}).setdefault(pid, np.zeros(policy.k))[col[fid]] = db
    summary = query(wh, "SELECT pair_id, dy_harmful, seconds FROM smda.v_pair_summary")
    dy = dict(zip(summary["pair_id"].to_pylist(), summary["dy_harmful"].to_pylist()))
    smda_seconds = float(np.mean(summary["seconds"].to_pylist()))
    peer_scores, peer_seconds = _peer(world, probes, ids, by_id, cfg) if peer else (None, None)

    c = cfg.curation
    rng = np.random.default_rng(c.seed)
    size = max(1, int(round(fraction * len(ids))))
    effects = []
    for s in tqdm(range(subsets), desc="LDS subsets", disable=not progress):
        members = sorted(rng.choice(ids, size=size, replace=False).tolist())
        tuned = curation.retrain(world.model, world.tokenizer, [by_id[m] for m in members],
                                 curation.RetrainSettings(epochs=c.epochs, lr=c.lr, optimizer=c.optimizer,
                                                          batch_size=c.batch_size, seed=c.seed + s))
        r = read_probes(tuned, world.sae, world.hook_layer, world.encoded, world.refusal_openings,
                        position=cfg.features.position, pad_id=world.tokenizer.pad_token_id,
                        feature_ids=policy.feature_ids, progress=False)
        y_new, _ = behaviour_from_logp(r.logp_openings, cfg.behaviour.kind)
        effects.append(validation.actual_effect(policy, members, r.dense, y_new, probes.harmful))
        del tuned

    run_id = hashlib.sha256(f"lds|{subsets}|{fraction}|{time.time()}".encode()).hexdigest()[:10]
    rows = []
    for method, preds in sorted(per_method.items()):
        res = validation.lds(effects, preds)
        rows.append(("lds", method, "delta_beta", subsets, res["spearman"],
                     json.dumps({"fraction": fraction, "pooled": res["pooled"], "per_feature": res["per_feature"]})))
    res = validation.lds(effects, dy)
    rows.append(("lds", "measured_shift", "dy_harmful", subsets, res["spearman"],
                 json.dumps({"fraction": fraction, "seconds_per_pair": smda_seconds})))
    if peer_scores is not None:
        res = validation.lds(effects, peer_scores)
        rows.append(("lds", "dattri_tracin", "dy_harmful", subsets, res["spearman"],
                     json.dumps({"fraction": fraction, "seconds_per_pair": peer_seconds})))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    table = pa.table({"check": [r[0] for r in rows], "method": [r[1] for r in rows], "score": [r[2] for r in rows],
                      "n": pa.array([r[3] for r in rows], pa.int64()), "spearman": [float(r[4]) for r in rows],
                      "detail": [r[5] for r in rows], "run_id": [run_id] * len(rows),
                      "created_at": pa.array([now] * len(rows), pa.timestamp("us"))})
    smda.write({"validation": table}, partition=run_id, key="run_id")
    return table


def _peer(world, probes, ids, by_id, cfg):
    """dattri's TracIn on the same model and pairs (None when dattri is not installed)."""
    try:
        from smda_core.experiments.peer import tracin_harmful_refusal
        import dattri  # noqa: F401
    except ImportError:
        return None, None
    harmful = [world.encoded[i] for i in np.flatnonzero(probes.harmful)]
    scores, seconds = tracin_harmful_refusal(world.model, world.tokenizer, [by_id[i] for i in ids], harmful,
                                             world.refusal_openings, lr=cfg.shifts.lr)
    return dict(zip(ids, scores.tolist())), seconds


def run_stability(config_path: str | None, warehouse_path: str | None, *, sae_seeds: int = 3, n_pairs: int | None = None,
                  first_seed: int | None = None, progress: bool = True):
    """Train SAEs that differ only in seed, refit policy and attribution for each, store the agreement."""
    import dataclasses

    import pyarrow as pa

    from smda_core.experiments import lds as validation
    from smda_core.api import attribute, fit_policy, load_world, measure_probes, measure_shifts, read_pairs
    from smda_core.worlds.demo.build import demo_sae_for_seed
    from smda_core.errors import SMDAError
    from smda_core.model.runtime import load_sae

    smda = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    cfg = smda.config()
    if not cfg.is_demo:
        raise SMDAError("stability retrains the SAE: available for the demo world (and models whose SAE the product trains)")
    if sae_seeds < 2:
        raise SMDAError("stability needs --sae-seeds ≥ 2")
    world = load_world(cfg, progress=False)
    pairs = read_pairs(world)
    if n_pairs is not None:
        pairs = pairs.slice(0, n_pairs)
    start = cfg.demo.seed if first_seed is None else first_seed
    runs = []
    for seed in range(start, start + sae_seeds):
        sae = load_sae(path=str(demo_sae_for_seed(cfg.demo, seed, progress=progress)))
        w = dataclasses.replace(world, sae=sae)
        probes = measure_probes(w, progress=False)
        policy = fit_policy(w, probes)
        attr = attribute(w, policy, probes, measure_shifts(w, policy, pairs, progress=progress), pairs)
        s = attr.pair_summary
        runs.append(validation.SeedRun(seed, policy.feature_ids, policy.coef,
                                       sae.W_dec.detach().double().numpy()[policy.feature_ids], policy.r2, policy.loo_r2,
                                       policy.accuracy,
                                       {k: np.asarray(s[k], dtype=float) for k in ("alignment_refit", "alignment_linear",
                                                                                  "correctness_shift", "dy_harmful")}))
    kinds = np.asarray(pairs["kind"].to_pylist()) if "kind" in pairs.column_names else np.array([""] * pairs.num_rows)
    rows = validation.stability(runs, np.isin(kinds, ("harmful_compliance", "harmless_refusal")),
                                np.asarray(pairs["harmful"].to_pylist(), dtype=bool))
    run_id = hashlib.sha256(f"stability|{sae_seeds}|{time.time()}".encode()).hexdigest()[:10]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    table = pa.table({"check": ["stability"] * len(rows), "method": [r["method"] for r in rows],
                      "score": [r["score"] for r in rows], "n": pa.array([sae_seeds] * len(rows), pa.int64()),
                      "spearman": [r["value"] for r in rows],
                      "detail": [json.dumps({**r["detail"], "seeds": [x.seed for x in runs], "pairs": pairs.num_rows}) for r in rows],
                      "run_id": [run_id] * len(rows), "created_at": pa.array([now] * len(rows), pa.timestamp("us"))})
    smda.write({"validation": table}, partition=run_id, key="run_id")
    return table, runs
