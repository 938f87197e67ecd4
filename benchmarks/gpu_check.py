"""Seconds per pair of every shift tier on the GPU against the CPU, on the demo and the SmolLM2 small world, in one run.

Run it wherever a CUDA GPU is: `python benchmarks/gpu_check.py [--pairs 8] [--worlds demo smollm2-small]`.
For each world and device (cpu, then cuda with `model.device: cuda` and the config's dtype) it
loads the runtime, times the probe readout, fits the policy once (numpy), and times the pair
steps of each tier on the same pairs; it prints seconds per pair, the GPU/CPU speed-up and the
largest |ΔY| difference between the devices (float round-off: the two devices sum in other orders).
Without CUDA it says so and prints the CPU figures alone (exit 0), so it never fails where no GPU is.

Tiers: every value of `shifts.method` (exact, gradient, screen), each through the product's own
`measure_batch_shifts` with the local engine. The gradient tier's G is computed in the warm-up
(one pair) and read back from its file for the timed run, as every batch after a policy's first does.
The SmolLM2 small world is built on first use (≈ 5 min on 2 cores, cached under .cache/smda-real).
"""

import argparse
import time

from _world import ROOT


def tiers() -> list[str]:
    from typing import get_args

    from smda_core.config import ShiftSettings

    field = ShiftSettings.model_fields.get("method")
    return list(get_args(field.annotation)) if field is not None else ["exact"]


def world_config(name: str):
    from smda_core.config import load_config

    if name == "demo":
        return load_config(None, demo={"cache_dir": str(ROOT / ".cache" / "smda-demo")})
    from smda_core.worlds.real.build import build_real_world

    report = build_real_world("smollm2", small=name == "smollm2-small", cache_dir=ROOT / ".cache" / "smda-real",
                              materialize=None, progress=False)
    return load_config(report["config"])


def measure(cfg, device: str, tier: str, n_pairs: int, policy=None):
    """(policy, seconds of the readout, seconds per pair in the loop, the rest of the step's wall time, ΔY)."""
    import torch

    from smda_core import inputs
    from smda_core.api import fit_policy, load_runtime, measure_probes
    import tempfile
    from pathlib import Path

    from smda_core.execution import measure_batch_shifts

    cfg = cfg.replace(model=cfg.model.replace(device=device), shifts=cfg.shifts.replace(method=tier))
    runtime = load_runtime(cfg, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    t0 = time.perf_counter()
    probes = measure_probes(runtime, progress=False)
    _sync(torch, device)
    t_read = time.perf_counter() - t0
    policy = policy or fit_policy(probes, cfg.policy)
    pairs = inputs.read_sft_pairs(runtime.sources.sft[0], batch_id="gpu").slice(0, n_pairs)

    def step(rows):
        return measure_batch_shifts(cfg, policy, rows, method=tier, folder=tmp / "shards", cache=tmp / "g",
                                    runtime=runtime).result

    step(pairs.slice(0, 1))  # warm-up: CUDA kernels, allocator, G
    _sync(torch, device)
    t0 = time.perf_counter()
    result = step(pairs)
    _sync(torch, device)
    wall = time.perf_counter() - t0
    compared = result.dY if result.dY.size else result.prompt_X  # screen: no shift, the prompt's features
    return policy, t_read, float(result.seconds.mean()), wall - float(result.seconds.sum()), compared


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--worlds", nargs="+", default=["demo", "smollm2-small"])
    args = parser.parse_args()

    import numpy as np
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("no CUDA device here: CPU figures only (run this where a GPU is to compare)")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}; CPU threads: {torch.get_num_threads()}")
    for world in args.worlds:
        cfg = world_config(world)
        for tier in tiers():
            policy, rows = None, {}
            for device in devices:
                policy, t_read, per_pair, fixed, dy = measure(cfg, device, tier, args.pairs, policy)
                rows[device] = (t_read, per_pair, dy)
                print(f"{world:>14} {tier:>8} {device:>4}: readout {t_read:6.2f} s, {per_pair:7.3f} s/pair "
                      f"(+ {fixed:.1f} s once per batch: base readout, copies; dtype {cfg.model.dtype}, "
                      f"shifts {cfg.shifts.dtype})", flush=True)
            if "cuda" in rows:
                diff = float(np.abs(rows["cuda"][2] - rows["cpu"][2]).max())
                print(f"{world:>14} {tier:>8}  GPU/CPU: {rows['cpu'][1] / rows['cuda'][1]:.1f}× per pair, "
                      f"readout {rows['cpu'][0] / rows['cuda'][0]:.1f}×, max |ΔY (screen: X) cuda − cpu| = {diff:.1e}")


if __name__ == "__main__":
    main()
