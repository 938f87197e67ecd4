"""Where a batch's pair steps run (config `execution:`): in this process, or as Ray tasks over shards of pairs.

Both engines run the same pair step (:mod:`smda_core.execution.shards`) and give the same
result to float precision: a shard boundary changes nothing. Ray is imported only by
:mod:`smda_core.execution.ray_engine`, only for `engine: ray`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from smda_core.config import SMDAConfig
from smda_core.errors import SMDAError
from smda_core.execution.shards import (PairStep, Shard, ShardError, ShardRun, ShardStore, exact_shift_step,
                                        gradient_shift_step, plan_shards, prepare_gradient_tier, release_gradient_tier,
                                        screen_shift_step)

__all__ = ["PairStep", "Shard", "ShardError", "ShardRun", "ShardStore", "gradient_cache_folder", "measure_batch_shifts",
           "on_engine", "plan_shards", "shift_step", "shard_folder"]


def shift_step(config: SMDAConfig, policy, method: str = "exact", *, g_file: str | None = None,
               key: str | None = None) -> tuple[PairStep, type]:
    """The pair step of a tier for this policy, and the type of its result; both engines run it unchanged.

    The gradient step reads G from `g_file` (written under `key` by :func:`prepare_gradient_tier`).
    """
    from smda_core.model.measurements import GradientShifts, PairShifts

    if method == "exact":
        return functools.partial(exact_shift_step, feature_ids=policy.feature_ids, settings=config.shifts), PairShifts
    if method == "gradient":
        if g_file is None or key is None:
            raise SMDAError("the gradient step needs the batch's G file: prepare_gradient_tier first")
        return functools.partial(gradient_shift_step, feature_ids=policy.feature_ids, g_file=g_file, key=key), GradientShifts
    if method == "screen":
        return functools.partial(screen_shift_step, feature_ids=policy.feature_ids, X_base=policy.X,
                                 y_base=policy.y), GradientShifts
    raise SMDAError(f"shifts.method '{method}' is unknown: use exact, gradient or screen")


def shard_folder(config: SMDAConfig, batch_folder: Path, batch_id: str, method: str = "exact") -> Path:
    """Where a batch's shards of one tier are written: `execution.shard_dir/<batch>` (reachable from every node),
    else the batch's staging folder."""
    root = Path(config.execution.shard_dir).resolve() / batch_id if config.execution.shard_dir else Path(batch_folder).resolve()
    return root / ("shards" if method == "exact" else f"shards-{method}")


def gradient_cache_folder(config: SMDAConfig, files_folder: Path) -> Path:
    """Where G files are kept, shared by every batch and worker: under `execution.shard_dir` when set (every node
    reaches it), else under the warehouse's files folder."""
    root = config.execution.shard_dir
    return (Path(root).resolve() if root else Path(files_folder).resolve() / "cache") / "probe-gradients"


def measure_batch_shifts(config: SMDAConfig, policy, pairs: pa.Table, *, folder: Path, method: str = "exact",
                         cache: Path | None = None, on_shard: Callable[[dict, int, int], None] | None = None,
                         runtime=None) -> ShardRun:
    """One tier's shifts of every pair of a batch with the configured engine; a `ShardRun` (result, engine, address,
    shards).

    engine `local` loads the model here (or uses `runtime`) and runs the step over the pairs, a chunk at a time
    behind a progress bar;
    engine `ray` runs it as one task per `execution.shard_size` pairs and concatenates the shards.
    The gradient tier first gets G for the policy (`cache`: read when computed before, else computed
    and kept), here (local) or in one Ray task (ray: the shard tasks then read the file once per worker).
    """
    from smda_core.runtime import load_runtime

    if method == "gradient" and cache is None:
        raise SMDAError("the gradient tier needs a folder for its probe gradients (gradient_cache_folder)")
    g = {}
    if config.execution.engine == "local":
        runtime = runtime or load_runtime(config, progress=False)
        if method == "gradient":
            g["key"], g["g_file"] = prepare_gradient_tier(runtime, **_g_inputs(policy, cache), progress=True)
        step, result_type = shift_step(config, policy, method, **g)
        try:
            parts, shards = _run_local(step, runtime, pairs, chunk=_local_chunk(config, method), desc=f"{method} shifts")
        finally:
            release_gradient_tier()  # this process goes on with other steps: neither G nor the base readout is kept
        return ShardRun(parts[0] if len(parts) == 1 else result_type.concat(parts), "local", None, shards)
    from smda_core.execution.ray_engine import run_shards, run_with_runtime
    from smda_core.sources import resolve_sources

    sources = resolve_sources(config, progress=False)
    if method == "gradient":
        g["key"], g["g_file"] = run_with_runtime(config.execution, config, sources, prepare_gradient_tier,
                                                 **_g_inputs(policy, cache))
    step, result_type = shift_step(config, policy, method, **g)
    return run_shards(config.execution, config, sources, step, pairs, ShardStore(Path(folder)), result_type,
                      on_shard=on_shard)


def _local_chunk(config: SMDAConfig, method: str) -> int:
    """Pairs per local call: an exact pair costs a step and a probe sweep of its own, so a shard's worth (the base
    readout is taken once for all calls) keeps the bar moving on a slow model; the cheap tiers take four shards or
    a whole backward batch at once."""
    if method == "exact":
        return config.execution.shard_size
    return max(4 * config.execution.shard_size, config.gradient.pair_batch)


def _run_local(step: PairStep, runtime, pairs: pa.Table, *, chunk: int, desc: str) -> tuple[list, list[dict]]:
    """The step over `chunk` pairs at a time in this process, with a progress bar over the pairs (a real SFT set
    takes hours): the parts, and one shard record per chunk."""
    import time

    from tqdm.auto import tqdm

    parts, shards = [], []
    with tqdm(total=pairs.num_rows, desc=desc, unit="pair", mininterval=2.0) as bar:
        for start in range(0, pairs.num_rows, chunk):
            t0 = time.perf_counter()
            part = step(runtime, pairs.slice(start, chunk))
            parts.append(part)
            shards.append({"shard": len(shards), "pair_ids": list(part.pair_ids), "attempts": 1,
                           "seconds": time.perf_counter() - t0})
            bar.update(len(part.pair_ids))
    return parts, shards


def _g_inputs(policy, cache: Path) -> dict:
    from smda_core.api import gradient_functionals

    return {"feature_ids": policy.feature_ids, "x_weights": gradient_functionals(policy), "folder": str(cache)}


def on_engine(config: SMDAConfig, fn: Callable, *args):
    """`fn(*args)` where the config's pair steps run: here (local), or as one Ray task (ray), retried like a shard.

    For a batch-wide numpy step (attribution: its calibrated scores compare the batch's pairs with
    each other, so it is one task per batch, not per shard); the result comes back through Ray.
    """
    if config.execution.engine == "local":
        return fn(*args)
    from smda_core.execution.ray_engine import run_task

    return run_task(config.execution, fn, *args)
