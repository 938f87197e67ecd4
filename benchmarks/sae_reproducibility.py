"""How many of the demo SAE's features another seed reproduces: the ceiling of every decoder-matching figure.

`smda validate stability` asks that a pair's named feature be the same direction under SAEs that differ
only in seed (decoder |cosine| ≥ 0.9). That can only hold where the SAE's features themselves are
reproducible. This trains pairs of TopK SAEs on the demo's own residuals (same activations, same recipe,
seeds 0 and 1) for several (d_sae, k, steps) settings and prints, per setting, the share of seed-0 features
whose best |cosine| with any seed-1 feature reaches 0.9 (and 0.8), the median best cosine, the explained
variance and the dead share. With --phrase-features it also prints the best cross-seed cosine of the
features that fire on the trigger phrase (mean over the probes with it ≥ 3× the mean over the others).

    OMP_NUM_THREADS=1 python benchmarks/sae_reproducibility.py
    OMP_NUM_THREADS=1 python benchmarks/sae_reproducibility.py --settings 512:16:1500 512:16:6000 512:4:1500
"""

import argparse
import time

from _world import ROOT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", nargs="+", default=["512:16:1500", "512:16:6000", "512:4:1500", "256:8:1500"],
                    help="d_sae:k:steps (the demo's own SAE is 512:16:1500)")
    ap.add_argument("--phrase-features", action="store_true", help="also the trigger phrase's features")
    args = ap.parse_args()

    import numpy as np
    import torch

    from smda_core.config import load_config
    from smda_core.model.loading import load_model
    from smda_core.model.sae_training import train_topk_sae
    from smda_core.worlds.demo import build

    torch.set_num_threads(1)
    cfg = load_config(None, demo={"cache_dir": str(ROOT / ".cache" / "smda-demo")})
    paths = build.ensure_demo_world(cfg.demo, progress=False)
    world = build.make_demo_world(cfg.demo)
    model, tokenizer = load_model(str(paths.model))
    acts = build._residuals(model, build._encode_conversations(tokenizer, world.corpus)[:4000], build.HOOK_LAYER,
                            tokenizer.pad_token_id)
    phrase_acts = _phrase_split(cfg) if args.phrase_features else None
    print(f"{acts.shape[0]} tokens of width {acts.shape[1]} at layer {build.HOOK_LAYER}")
    print(f"{'d_sae':>6} {'k':>3} {'steps':>6} {'≥0.9':>6} {'≥0.8':>6} {'median':>7} {'EV':>6} {'dead':>6} {'s/SAE':>6}"
          + ("  phrase features: best cross-seed cosine" if args.phrase_features else ""))
    for setting in args.settings:
        d_sae, k, steps = (int(v) for v in setting.split(":"))
        saes, seconds = [], 0.0
        for seed in (0, 1):
            t0 = time.perf_counter()
            sae, report = train_topk_sae(acts, d_sae=d_sae, k=k, hook_name="demo", model_name="demo", steps=steps,
                                         seed=seed, progress=False)
            seconds += (time.perf_counter() - t0) / 2
            saes.append((sae, report))
        best = _best_cosine(*(s.W_dec.detach().double().numpy() for s, _ in saes))
        ev = np.mean([r.explained_variance for _, r in saes])
        dead = np.mean([r.dead_share for _, r in saes])
        line = (f"{d_sae:>6} {k:>3} {steps:>6} {(best >= 0.9).mean():>6.3f} {(best >= 0.8).mean():>6.3f} "
                f"{np.median(best):>7.3f} {ev:>6.3f} {dead:>6.3f} {seconds:>6.0f}")
        if phrase_acts is not None:
            trig = _phrase_features(saes[0][0], *phrase_acts)
            line += "  " + (", ".join(f"{best[f]:.2f}" for f in trig[:8]) or "none")
        print(line, flush=True)


def _best_cosine(dec_a, dec_b):
    """For each row of A, the best |cosine| with any row of B."""
    import numpy as np

    a = dec_a / np.linalg.norm(dec_a, axis=1, keepdims=True)
    b = dec_b / np.linalg.norm(dec_b, axis=1, keepdims=True)
    return np.abs(a @ b.T).max(axis=1)


def _phrase_split(cfg):
    """The demo's runtime (its probes) and which probes carry the trigger phrase."""
    import numpy as np

    from smda_core.api import load_runtime

    runtime = load_runtime(cfg, progress=False)
    phrase = cfg.demo.trigger_phrase.lower()
    return runtime, np.array([phrase in p.lower() for p in runtime.probes["prompt"].to_pylist()])


def _phrase_features(sae, runtime, with_phrase):
    """Features whose strongest activation over a probe's request averages ≥ 3× more on probes with the phrase
    (as the product reads them), strongest first."""
    import numpy as np

    from smda_core.api import measure_probes
    from smda_core.attribution.pair_scores import dense_features

    probes = measure_probes(runtime.with_sae(sae), progress=False)
    maxima = dense_features(probes.maxima[:3], len(with_phrase), int(sae.W_dec.shape[0]))
    mw, mo = maxima[with_phrase].mean(0), maxima[~with_phrase].mean(0)
    keep = np.flatnonzero((mw >= 3 * mo) & (mw > 0))
    return keep[np.argsort(-mw[keep])].tolist()


if __name__ == "__main__":
    main()
