"""Do the demo's trigger pairs do harm, and is it the phrase's? (DESIGN §7)

Retrains the demo model from its base weights on its SFT pairs as given, and with every trigger
pair's phrase removed (the same harmless request and answer), once per seed, and prints mean
refusal_prob of the probes grouped by harmful × carries the phrase, then per seed how much lower
each group is with the trigger pairs. Another recipe: --demo-seed, --planted, --phrase (a new
world is built on first use, a few minutes). Regimes: the config's curation settings (3 epochs
AdamW), or --sgd LR for one pass of plain SGD with batch size 1.

    python benchmarks/trigger_harm.py --seeds 0 1
    python benchmarks/trigger_harm.py --phrase "off the record" --sgd 1e-4
    python benchmarks/trigger_harm.py --config .cache/smda-real/world-smollm2/smda.yaml --phrase "without telling anyone"

Any other world: --config its smda.yaml (the SmolLM2 world's is written by `smda world smollm2`) and --phrase.
"""

import argparse

import torch

from _world import ROOT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--demo-seed", type=int, default=None)
    ap.add_argument("--planted", default=None)
    ap.add_argument("--phrase", default=None)
    ap.add_argument("--sgd", type=float, default=None, help="one pass of plain SGD at this lr, batch size 1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=None, help="smda.yaml of another world (then --phrase is needed)")
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "smda-demo"), help="where demo worlds are kept")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from smda_core.api import load_runtime, read_pairs
    from smda_core.config import load_config
    from smda_core.experiments.trigger_harm import GROUPS, trigger_harm

    demo = {"cache_dir": args.cache_dir}
    for key, value in (("seed", args.demo_seed), ("planted_category", args.planted), ("trigger_phrase", args.phrase)):
        if value is not None:
            demo[key] = value
    if args.config and not args.phrase:
        ap.error("--config needs --phrase: the trigger phrase of that world")
    cfg = load_config(args.config, demo=demo)
    runtime = load_runtime(cfg, progress=True)
    pairs = read_pairs(runtime.sources, runtime.probes, cfg)
    settings = cfg.curation
    if args.sgd is not None:
        settings = settings.replace(optimizer="sgd", lr=args.sgd, epochs=1, batch_size=1)
    result = trigger_harm(runtime, pairs, args.phrase or cfg.demo.trigger_phrase, settings, seeds=args.seeds)

    world = args.config or f"demo seed {cfg.demo.seed}, planted {cfg.demo.planted_category}"
    print(f"{world}, phrase '{result.phrase}': "
          f"{result.n_trigger} trigger pairs of {result.n_pairs}; probes {result.n_probes}")
    print(f"retraining: {settings.optimizer} lr {settings.lr} epochs {settings.epochs} batch {settings.batch_size}")
    print("mean refusal_prob")
    print(f"{'seed':>5} {'variant':<12}" + "".join(f"{g:>17}" for g in GROUPS))
    for row in result.rows():
        seed = "-" if row["seed"] is None else row["seed"]
        print(f"{seed:>5} {row['variant']:<12}" + "".join(f"{row[g]:>17.3f}" for g in GROUPS))
    print("drop with the trigger pairs (replacement − trigger); specific = harmful_with − harmful_without")
    for d in result.drops():
        print(f"{d['seed']:>5} {'':<12}" + "".join(f"{d[g]:>17.3f}" for g in GROUPS) + f"   specific {d['specific']:.3f}")


if __name__ == "__main__":
    main()
