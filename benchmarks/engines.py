"""Wall time of one batch's pair steps with `execution.engine: local` and with `engine: ray`, in one run.

Both sides measure the same demo pairs with the same tier and check that they agree (float64,
1e-9). "local" is the product's default: the model loaded in this process, every pair in turn.
"ray" starts a local Ray with `--workers` worker processes (no dashboard), runs one task per
shard of `--shard-size` pairs (each worker loads the model once) and concatenates the shards.
Printed: both wall times, their ratio, and where Ray's time goes (start, worker warm-up = imports
plus model load, the pair steps themselves, gathering the shard files). On two cores the ratio
cannot exceed 2.

The gradient tier is not on this branch yet: `--method exact` (the default) measures the exact
tier; `--method gradient` is accepted and runs once the tier adds its setting to `shifts:`
(then `smda_core.execution.shift_step` returns its step), e.g. with `--pairs 2000`.

    python benchmarks/engines.py --pairs 24 --workers 2 --shard-size 6
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from _world import ROOT


def config(method: str):
    from smda_core.config import ShiftSettings, load_config

    overrides = {"demo": {"cache_dir": str(ROOT / ".cache" / "smda-demo")}}
    if method != "exact":
        if "method" not in ShiftSettings.model_fields:
            raise SystemExit(f"--method {method}: that tier is not on this branch yet (shifts: has no `method`); "
                             f"use --method exact")
        overrides["shifts"] = {"method": method}
    return load_config(None, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=6)
    parser.add_argument("--method", default="exact", help="exact (now) or gradient (once the tier lands)")
    args = parser.parse_args()

    import numpy as np
    import ray
    import torch

    from smda_core import inputs
    from smda_core.api import fit_policy, load_runtime, measure_probes
    from smda_core.execution import ShardStore, shift_step
    from smda_core.execution.ray_engine import _local_runtime_env, run_shards
    from smda_core.sources import resolve_sources

    torch.set_num_threads(1)  # what each Ray worker gets (one CPU per task): a fair local side
    cfg = config(args.method)
    runtime = load_runtime(cfg, progress=False)
    policy = fit_policy(measure_probes(runtime, progress=False), cfg.policy)
    src = resolve_sources(cfg, progress=False)
    pairs = inputs.read_sft_pairs(src.sft[0], batch_id="bench")
    pairs = pairs.slice(0, min(args.pairs, pairs.num_rows))
    step, result_type = shift_step(cfg, policy)

    t0 = time.perf_counter()
    fresh = load_runtime(cfg, progress=False)  # the local engine loads the model once, as the asset does
    t_load = time.perf_counter() - t0
    local = step(fresh, pairs)
    t_local = time.perf_counter() - t0

    settings = cfg.execution.replace(engine="ray", shard_size=args.shard_size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, runtime_env=_local_runtime_env(None))
        t_start = time.perf_counter() - t0
        store = ShardStore(Path(tmp) / "shards")
        submitted = time.time()
        t1 = time.perf_counter()
        run = run_shards(settings, cfg, src, step, pairs, store, result_type)
        t_gather_end = time.perf_counter()
        t_ray = t_gather_end - t0
        first_start = min(a["at"] for s in run.shards for a in store.attempts(_shard(s)))
        step_seconds = sum(s["seconds"] for s in run.shards)
        last_done = max(a["at"] for s in run.shards for a in store.attempts(_shard(s))) - submitted
        ray.shutdown()
    worst = max(float(np.abs(getattr(local, n) - getattr(run.result, n)).max()) for n in ("dX_exact", "dY", "dP"))
    n = pairs.num_rows
    print(f"{n} demo pairs, tier {args.method}, {len(run.shards)} shards of ≤{args.shard_size}, {args.workers} Ray workers, "
          f"{os.cpu_count()} cores (max |local − ray| = {worst:.1e})")
    print(f"local: {t_local:7.1f} s  (model load {t_load:.1f} s, pair steps {t_local - t_load:.1f} s = "
          f"{(t_local - t_load) / n:.2f} s/pair)")
    print(f"ray  : {t_ray:7.1f} s  (Ray start {t_start:.1f} s, worker warm-up to the first shard {first_start - submitted:.1f} s, "
          f"pair steps {step_seconds:.1f} worker-s = {step_seconds / n:.2f} s/pair, last shard began at "
          f"{last_done:.1f} s, run_shards {t_gather_end - t1:.1f} s)")
    print(f"speed-up local/ray = {t_local / t_ray:.2f}  (without starting Ray: {t_local / (t_gather_end - t1):.2f})")


def _shard(record: dict):
    from smda_core.execution import Shard

    return Shard(record["shard"], record["start"], record["stop"], tuple(record["pair_ids"]))


if __name__ == "__main__":
    main()
