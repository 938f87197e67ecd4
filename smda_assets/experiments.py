"""Wiring of the experiments (curation, LDS, stability): read the warehouse, one core call, write the result.

The experiments themselves live in `smda_core.experiments`; the `smda curate` / `smda validate`
commands and the curation asset call these three functions.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pyarrow as pa

from smda_assets.resources import SMDAResource


def curate(smda: SMDAResource, *, rule: str | None = None, n_random: int | None = None, seeds: int | None = None,
           progress: bool = True):
    """Drop pairs by a rule, retrain full / curated / oracle / random variants, store them in `smda.curation`."""
    from smda_core.experiments.curation import run_experiment
    from smda_core.store.query import query

    cfg = smda.config()
    wh = smda.warehouse
    summary = query(wh, "SELECT * FROM smda.v_pair_summary ORDER BY pair_id")
    pairs = query(wh, "SELECT * FROM smda.v_sft_pairs ORDER BY pair_id")
    scores = smda.readout()[0]
    policy = smda.policy(scores)
    result = run_experiment(smda.runtime(), policy.heldout, scores.harmful, scores.category, summary,
                            pairs, rule or cfg.curation.rule,
                            cfg.curation.replace(seeds=seeds) if seeds else cfg.curation,
                            sql=lambda sql: query(wh, sql).column(0).to_pylist(), n_random=n_random, progress=progress)
    smda.write({"curation": result.table()}, partition=result.experiment_id, key="experiment_id")  # experiments accumulate
    return result


def _run_id(*parts) -> str:
    return hashlib.sha256("|".join(map(str, (*parts, time.time()))).encode()).hexdigest()[:10]


def lds(smda: SMDAResource, *, subsets: int = 8, fraction: float = 0.5, peer: bool = True, progress: bool = True,
        regime: str = "paper") -> pa.Table:
    """Counterfactual agreement of the stored attributions with retrained subsets; stored in `smda.validation`.

    `regime`: `paper` (the curation settings: AdamW, 3 epochs; check `lds`), `sgd` (what the attribution models:
    plain SGD at the shift's learning rate, one pass, one pair per step; check `lds_sgd`) or `both`. Only methods
    that attributed every pair take part (an exact validation sample does not)."""
    from smda_core.errors import SMDAError

    if regime not in ("paper", "sgd", "both"):
        raise SMDAError(f"--regime {regime}: use paper, sgd or both")
    regimes = ["paper", "sgd"] if regime == "both" else [regime]
    cache: dict = {}  # the peer's scores do not depend on the regime: computed once
    tables = [_lds_regime(smda, r, subsets=subsets, fraction=fraction, peer=peer, progress=progress, cache=cache)
              for r in regimes]
    return pa.concat_tables(tables)


def _lds_regime(smda: SMDAResource, regime: str, *, subsets: int, fraction: float, peer: bool, progress: bool,
                cache: dict) -> pa.Table:
    from smda_core.experiments.lds import run_lds
    from smda_core.store.query import query

    cfg = smda.config()
    wh = smda.warehouse
    scores = smda.readout()[0]
    policy = smda.policy(scores)
    runtime = smda.runtime()
    rows = query(wh, "SELECT pair_id, prompt, response FROM smda.v_sft_pairs ORDER BY pair_id").to_pylist()
    pairs = {r["pair_id"]: (r["prompt"], r["response"]) for r in rows}
    col = {f: j for j, f in enumerate(policy.feature_ids.tolist())}
    attributions: dict[str, dict[str, np.ndarray]] = {}
    for r in query(wh, "SELECT pair_id, feature_id, method, delta_beta FROM smda.v_pair_attribution").to_pylist():
        attributions.setdefault(r["method"], {}).setdefault(r["pair_id"], np.zeros(policy.k))[col[r["feature_id"]]] = r["delta_beta"]
    attributions = {m: a for m, a in attributions.items() if set(pairs) <= set(a)}  # every pair attributed
    summary = query(wh, "SELECT pair_id, dy_harmful, margin_shift, seconds, method FROM smda.v_pair_summary").to_pylist()
    margin: dict[str, dict[str, float]] = {}
    dy: dict[str, dict[str, float]] = {}
    for r in summary:
        margin.setdefault(r["method"], {})[r["pair_id"]] = r["margin_shift"]
        dy.setdefault(r["method"], {})[r["pair_id"]] = r["dy_harmful"]
    if peer and "peer" not in cache:
        cache["peer"] = _peer(runtime, scores.harmful, pairs, cfg.shifts.lr)
    peers = cache.get("peer") if peer else None
    settings = cfg.curation if regime == "paper" else cfg.curation.replace(optimizer="sgd", lr=cfg.shifts.lr, epochs=1,
                                                                          batch_size=1, weight_decay=0.0)
    result = run_lds(runtime, policy, scores.harmful, pairs, attributions, {m: v for m, v in dy.items() if set(pairs) <= set(v)},
                     subsets=subsets, fraction=fraction, settings=settings,
                     seconds_per_pair=float(np.mean([r["seconds"] for r in summary])), peer=peers, progress=progress,
                     margin={m: v for m, v in margin.items() if set(pairs) <= set(v) and None not in v.values()})
    check = "lds" if regime == "paper" else "lds_sgd"
    run_id = _run_id(check, subsets, fraction)
    table = result.table(run_id)
    if check != "lds":
        table = table.set_column(table.schema.get_field_index("check"), "check", pa.array([check] * table.num_rows))
    smda.write({"validation": table}, partition=run_id, key="run_id")
    return table


def _peer(runtime, harmful: np.ndarray, pairs: dict, lr: float) -> dict | None:
    """dattri's TracIn and TRAK on the same model and pairs (None when dattri is not installed)."""
    try:
        import dattri  # noqa: F401
    except ImportError:
        return None
    from smda_core.experiments.peer import harmful_target, margin_target, tracin, trak

    ids = sorted(pairs)
    rows = [pairs[i] for i in ids]
    targets = (harmful_target(harmful), margin_target(harmful))
    out = {}
    for name, peer, kw in (("dattri_tracin", tracin, {"lr": lr}), ("dattri_trak", trak, {})):
        scores, seconds = peer(runtime.model, runtime.tokenizer, rows, runtime.encoded, targets, runtime.refusal_openings, **kw)
        out[name] = {"scores": dict(zip(ids, scores[:, 0].tolist())), "seconds": seconds,
                     "margin": dict(zip(ids, scores[:, 1].tolist()))}
    return out


def stability(smda: SMDAResource, *, sae_seeds: int = 3, n_pairs: int | None = None, first_seed: int | None = None,
              progress: bool = True):
    """SAEs that differ only in seed: agreement of policy and pair scores across them; stored in `smda.validation`."""
    from smda_core.api import read_pairs
    from smda_core.errors import SMDAError
    from smda_core.experiments.curation import BAD_KINDS
    from smda_core.experiments.lds import validation_table
    from smda_core.experiments.stability import run_stability, stability as agreement
    from smda_core.worlds.demo.build import demo_sae_for_seed

    cfg = smda.config()
    if not cfg.is_demo:
        raise SMDAError("stability retrains the SAE: available for the demo world (and models whose SAE the product trains)")
    if sae_seeds < 2:
        raise SMDAError("stability needs --sae-seeds ≥ 2")
    runtime = smda.runtime()
    pairs = read_pairs(runtime.sources, runtime.probes, cfg)
    if n_pairs is not None:
        pairs = pairs.slice(0, n_pairs)
    start = cfg.demo.seed if first_seed is None else first_seed
    saes = [(seed, demo_sae_for_seed(cfg.demo, seed, progress=progress)) for seed in range(start, start + sae_seeds)]
    runs = run_stability(runtime, cfg, pairs, sae_dirs=saes, progress=progress)
    kinds = np.asarray(pairs["kind"].to_pylist()) if "kind" in pairs.column_names else np.array([""] * pairs.num_rows)
    rows = agreement(runs, np.isin(kinds, BAD_KINDS),
                     np.asarray(pairs["harmful"].to_pylist(), dtype=bool), kinds=kinds)
    run_id = _run_id("stability", sae_seeds)
    table = validation_table("stability", run_id, [{"method": r["method"], "score": r["score"], "n": sae_seeds,
                                                    "spearman": r["value"],
                                                    "detail": {"pairs": pairs.num_rows, **r["detail"],
                                                               "seeds": [x.seed for x in runs]}} for r in rows])
    smda.write({"validation": table}, partition=run_id, key="run_id")
    return table, runs
