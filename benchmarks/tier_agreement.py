"""Gradient and screen tiers against the exact tier on the demo's pairs: the must-show figures of issue 14.

Prints, for one plain SGD step (the config's lr): the median over policy features of the Spearman of Δβ
across pairs (total, via_y, via_x), the Spearman of every log-odds score and of the recommended `score`,
and the bad-pair AUC of each tier for every bad kind; and the cost per pair of each tier.

    OPENBLAS_NUM_THREADS=1 nice -n 10 python benchmarks/tier_agreement.py [--pairs 200] [--projection K[,K2,...]]

With several projection sizes (0 = exact gradients), the exact tier runs once and a last table shows how
agreement and cost grow with k.
"""

from __future__ import annotations

import argparse
import time

import _world  # noqa: F401  (puts the checkout on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=0, help="first N pairs (0 = all)")
    ap.add_argument("--projection", default="0", help="k per side of the Kronecker projection (0 = exact gradients); "
                    "a comma-separated list compares several against one exact run")
    ap.add_argument("--dtype", default="float32", help="gradient.dtype: per-pair gradients and stored G")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    from smda_core import api
    from smda_core.attribution.agreement import method_agreement
    from smda_core.attribution.logodds import screen_consistency
    from smda_core.attribution.separation import separation_table
    from smda_core.config import load_config

    sizes = [int(k) for k in args.projection.split(",")]
    cfg = load_config(None, demo={"cache_dir": args.cache_dir or str(_world.ROOT / ".cache" / "smda-demo")})
    rt = api.load_runtime(cfg, progress=False)
    probes = api.measure_probes(rt, progress=False)
    policy = api.fit_policy(probes, cfg.policy)
    pairs = api.read_pairs(rt.sources, rt.probes, cfg)
    if args.pairs:
        pairs = pairs.slice(0, args.pairs)
    meta = pairs.select(["pair_id", "kind", "harmful"]).to_pandas()

    t0 = time.perf_counter()
    exact = api.measure_shifts(rt, policy, pairs, progress=False)
    t_exact = (time.perf_counter() - t0) / pairs.num_rows
    t0 = time.perf_counter()
    screen = api.screen_pairs(rt, policy, pairs)
    t_screen = (time.perf_counter() - t0) / pairs.num_rows
    a_exact = api.attribute(policy, probes, exact, pairs, cfg)
    s_exact = _summary(a_exact)
    s_screen = pd.DataFrame({"pair_id": screen.pair_ids,
                             "screen_consistency": screen_consistency(policy.predict(screen.prompt_X), policy.threshold,
                                                                      screen.response_refuses),
                             "policy_projection": policy.predict(screen.prompt_X) - policy.intercept})
    s_screen["score"] = s_screen["screen_consistency"]
    pd.set_option("display.width", 200)
    print(f"demo: {pairs.num_rows} pairs, {policy.n} probes, k={policy.k}, lr={cfg.shifts.lr}, "
          f"recommended score={cfg.attribution.score}; seconds per pair: exact {t_exact:.4f}, screen {t_screen:.4f}")
    print(method_agreement(s_exact, s_screen, method="screen").to_string(index=False))
    summary, tiers = [], [("exact", s_exact), ("screen", s_screen)]
    for k in sizes:
        gradient = cfg.gradient.model_copy(update={"projection": k or None, "dtype": args.dtype})
        t0 = time.perf_counter()
        grad, _ = api.gradient_shifts(rt, policy, pairs, progress=False, gradient=gradient)
        t_total = time.perf_counter() - t0
        a_grad = api.attribute(policy, probes, grad, pairs, cfg)
        s_grad = _summary(a_grad)
        agree = method_agreement(s_exact, s_grad, method="gradient",
                                 reference_attribution=pd.DataFrame(a_exact.pair_attribution),
                                 other_attribution=pd.DataFrame(a_grad.pair_attribution))
        agree = agree[agree["feature_id"].isna()]
        name = f"gradient k={k}" if k else "gradient exact"
        print(f"\n{name}: {np.mean(grad.seconds):.4f} s per pair (+ G once: {grad.meta['g_seconds']:.1f} s, "
              f"{grad.meta['g_bytes'] / 2**20:.0f} MiB; {t_total / pairs.num_rows:.4f} s per pair with G)")
        print(agree.to_string(index=False))
        rho = dict(zip(agree["score"], agree["spearman"]))
        summary.append({"tier": name, "s_per_pair": np.mean(grad.seconds), "G_MiB": grad.meta["g_bytes"] / 2 ** 20,
                        **{c: rho.get(c) for c in ("score", "dy_harmful", "margin_shift", "delta_beta:median",
                                                   "via_y:median")}})
        tiers.append((name, s_grad))
    rows = []
    for name, s in tiers:
        sep = separation_table(s.merge(meta, on="pair_id"), scores=[c for c in ("score", "margin_shift", "local_shift",
                                                                                  "worst_group_shift", "screen_consistency")
                                                                    if c in s])
        sep.insert(0, "tier", name)
        rows.append(sep)
    table = pd.concat(rows)
    print("\nbad-pair AUC (1 = the score ranks every bad pair below every good pair of its prompt kind)")
    print(table.pivot_table(index=["score", "bad_kind"], columns="tier", values="auc").to_string())
    print("\nagreement with exact (Spearman across pairs) and cost, by projection size")
    print(pd.DataFrame(summary).to_string(index=False, float_format="%.3f"))


def _summary(attribution):
    import pandas as pd

    return pd.DataFrame({k: v for k, v in attribution.pair_summary.items() if k != "intended_features"})


if __name__ == "__main__":
    main()
