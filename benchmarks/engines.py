"""Wall time of one batch's pair steps with `execution.engine: local` and with `engine: ray`, in one run.

Both sides run the product's own path (`smda_core.execution.measure_batch_shifts`, as the
`pair_shifts` asset does) over the same demo pairs with the same tier, and must agree (max |Δ|
printed). "local" loads the model in this process and runs every pair in turn, with torch on
`--local-threads` threads (1 = what each Ray worker gets; the cores count = the product's default).
"ray" starts a local Ray with `--workers` worker processes (no dashboard) and runs one task per
shard of `--shard-size` pairs; each worker loads the model once. Ray runs its workers at
niceness 15: on a machine busy with other work they yield to it, and the comparison says so
(the load average is printed).

The gradient tier needs G (the probe gradients) once per policy: it is computed first, timed on
its own, and kept in a temporary cache folder that both engines then read (as every batch after the
first does in the product). On Ray one task computes or reads G and keeps it; the other workers load
the file once each.

Printed: the wall times, their ratio, and where Ray's time goes (start, worker warm-up = imports,
model and G load, the pair steps themselves, gathering the shard files). On two cores the ratio
cannot exceed 2.

    python benchmarks/engines.py --method gradient --pairs 2000 --shard-size 250
    python benchmarks/engines.py --method exact --pairs 24 --shard-size 6
    python benchmarks/engines.py --method gradient --world-pairs 2000   # a 2,000-pair demo world (built once)
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from _world import ROOT


def config(method: str, world_pairs: int | None, shard_size: int, workers: int):
    from smda_core.config import load_config

    demo = {"cache_dir": str(ROOT / ".cache" / "smda-demo")}
    if world_pairs:
        demo["n_pairs"] = world_pairs
    return load_config(None, demo=demo, shifts={"method": method},
                       execution={"shard_size": shard_size, "local_cpus": workers})


def take(pairs, m: int):
    """The first m pairs; when the world has fewer, its pairs again with suffixed ids (each is measured anew)."""
    import pyarrow as pa

    if m <= pairs.num_rows:
        return pairs.slice(0, m)
    parts, i = [], 0
    while sum(p.num_rows for p in parts) < m:
        part = pairs.slice(0, min(pairs.num_rows, m - sum(p.num_rows for p in parts)))
        ids = pa.array([f"{pid}~{i}" for pid in part["pair_id"].to_pylist()])
        parts.append(part.set_column(part.column_names.index("pair_id"), "pair_id", ids))
        i += 1
    return pa.concat_tables(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="gradient", choices=["exact", "gradient", "screen"])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--world-pairs", type=int, default=None, help="build a demo world with this many pairs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--local-threads", default="1,2", help="torch threads of the local runs, comma-separated")
    parser.add_argument("--g-cache", default=None, help="folder for G kept between runs (default: a temporary one)")
    args = parser.parse_args()

    import numpy as np
    import ray
    import torch

    from smda_core import inputs
    from smda_core.api import fit_policy, gradient_functionals, load_runtime, measure_probes
    from smda_core.execution import measure_batch_shifts
    from smda_core.execution.shards import prepare_gradient_tier, release_gradient_tier
    from smda_core.execution.ray_engine import _local_runtime_env
    from smda_core.sources import resolve_sources

    cfg = config(args.method, args.world_pairs, args.shard_size, args.workers)
    runtime = load_runtime(cfg, progress=False)
    policy = fit_policy(measure_probes(runtime, progress=False), cfg.policy)
    pairs = take(inputs.read_sft_pairs(resolve_sources(cfg, progress=False).sft[0], batch_id="bench"), args.pairs)
    n = pairs.num_rows
    fields = ("dY", "dP", "via_x", "prompt_X") if args.method != "exact" else ("dX_exact", "dY", "dP")

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.g_cache) if args.g_cache else Path(tmp) / "probe-gradients"
        if args.method == "gradient":
            torch.set_num_threads(max(int(t) for t in args.local_threads.split(",")))
            t0 = time.perf_counter()
            prepare_gradient_tier(runtime, feature_ids=policy.feature_ids, x_weights=gradient_functionals(policy),
                                  folder=str(cache))
            release_gradient_tier()
            print(f"G computed (or read from --g-cache) once in {time.perf_counter() - t0:.1f} s "
                  f"({sum(f.stat().st_size for f in cache.glob('*')) / 2**20:.0f} MiB file)")

        local = {}
        for threads in (int(t) for t in args.local_threads.split(",")):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            fresh = load_runtime(cfg, progress=False)  # the local engine loads the model once, as the asset does
            t_load = time.perf_counter() - t0
            run = measure_batch_shifts(cfg, policy, pairs, method=args.method, folder=Path(tmp) / f"local{threads}",
                                       cache=cache, runtime=fresh)
            local[threads] = (time.perf_counter() - t0, t_load, run.result)
        torch.set_num_threads(1)

        on_ray = cfg.replace(execution=cfg.execution.replace(engine="ray"))
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, runtime_env=_local_runtime_env(None))
        t_start = time.perf_counter() - t0
        submitted = time.time()
        t1 = time.perf_counter()
        run = measure_batch_shifts(on_ray, policy, pairs, method=args.method, folder=Path(tmp) / "ray", cache=cache)
        t_ray = time.perf_counter() - t0
        first_start = min(_started(Path(tmp) / "ray"))
        step_seconds = sum(s["seconds"] for s in run.shards)
        ray.shutdown()

    print(f"{n} demo pairs, tier {args.method}, {len(run.shards)} shards of ≤{args.shard_size}, {args.workers} Ray workers, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for threads, (wall, t_load, result) in local.items():
        worst = max(float(np.abs(getattr(result, f) - getattr(run.result, f)).max()) for f in fields)
        print(f"local, {threads} thread(s): {wall:7.1f} s  (model load {t_load:.1f} s, then {(wall - t_load) / n * 1e3:.1f} ms/pair)"
              f"   max |local − ray| = {worst:.1e}")
    print(f"ray, {args.workers} workers: {t_ray:7.1f} s  (Ray start {t_start:.1f} s; first shard began "
          f"{first_start - submitted:.1f} s after submission (worker warm-up: imports, model{', G' if args.method == 'gradient' else ''}); "
          f"shard steps {step_seconds:.1f} worker-s = {step_seconds / n * 1e3:.1f} ms/pair; the run itself "
          f"{time.perf_counter() - t1 - (time.perf_counter() - t0 - t_ray):.1f} s)")
    for threads, (wall, _, _) in local.items():
        print(f"speed-up local({threads} thread(s)) / ray = {wall / t_ray:.2f}  "
              f"(without starting Ray: {wall / (t_ray - t_start):.2f})")


def _started(folder: Path) -> list[float]:
    import json

    return [json.loads(p.read_text())["at"] for p in folder.glob("*.started-*.json")]


if __name__ == "__main__":
    main()
