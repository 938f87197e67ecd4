"""`smda curate` and the curation asset: wire the stored policy and attribution into a curation experiment."""

from __future__ import annotations

import hashlib
import time

from smda_assets.resources import SMDAResource


def run_curate(config_path: str | None, warehouse_path: str | None, *, rule: str | None = None,
               n_random: int | None = None, progress: bool = True) -> dict:
    """Select the drops, retrain and evaluate every variant, store them in `smda.curation`; returns the table and comparison."""
    import numpy as np

    from smda_core.experiments import curation
    from smda_core.api import load_world
    from smda_core.store.query import query

    smda = SMDAResource(config_path=config_path, warehouse_path=warehouse_path)
    cfg = smda.config()
    c = cfg.curation
    rule = rule or c.rule
    wh = smda.warehouse
    summary = query(wh, "SELECT * FROM smda.v_pair_summary ORDER BY pair_id")
    pairs = query(wh, "SELECT * FROM smda.v_sft_pairs ORDER BY pair_id")
    table = curation.pair_table(summary, pairs)
    dropped = curation.select_drops(rule, table, sql=lambda sql: query(wh, sql).column(0).to_pylist())
    oracle = table.pair_ids[np.isin(table.kind, curation.BAD_KINDS)].tolist() if table.kind is not None else None
    world = load_world(cfg, progress=False)
    probes, policy = smda.load("probe_scores"), smda.load("policy")
    ev = curation.eval_set(world, policy.heldout, probes.harmful, probes.category)
    by_id = {p: (pr, r) for p, pr, r in zip(pairs["pair_id"].to_pylist(), pairs["prompt"].to_pylist(), pairs["response"].to_pylist())}
    rows = [(p, *by_id[p]) for p in table.pair_ids.tolist()]
    settings = curation.RetrainSettings(epochs=c.epochs, lr=c.lr, optimizer=c.optimizer, batch_size=c.batch_size, seed=c.seed)
    variants = curation.run_curation(world.model, world.tokenizer, world.sae, ev, rows, dropped, settings=settings,
                                     oracle=oracle, n_random=n_random or c.n_random, progress=progress)
    experiment_id = hashlib.sha256(f"{rule}|{settings}|{time.time()}".encode()).hexdigest()[:10]
    out = curation.experiment_rows(experiment_id, rule, variants)
    smda.write({"curation": out}, partition=experiment_id, key="experiment_id")  # experiments accumulate
    bad = set(oracle) if oracle is not None else None
    return {"experiment_id": experiment_id, "rule": rule, "table": out.select(
        ["variant", "n_pairs", "correctness", "precision", "recall", "f1", "refusal_accuracy"]),
        "comparison": curation.comparison(variants, bad)}

