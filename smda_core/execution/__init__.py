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
from smda_core.execution.shards import PairStep, Shard, ShardError, ShardRun, ShardStore, exact_shift_step, plan_shards

__all__ = ["PairStep", "Shard", "ShardError", "ShardRun", "ShardStore", "measure_batch_shifts", "on_engine", "plan_shards",
           "shift_step", "shard_folder"]


def shift_step(config: SMDAConfig, policy) -> tuple[PairStep, type]:
    """The configured tier's pair step for this policy, and the type of its result.

    The exact tier is the one on this branch; another tier (gradient) returns its own step and
    result type here, and both engines run it unchanged.
    """
    from smda_core.model.measurements import PairShifts

    return functools.partial(exact_shift_step, feature_ids=policy.feature_ids, settings=config.shifts), PairShifts


def shard_folder(config: SMDAConfig, batch_folder: Path, batch_id: str) -> Path:
    """Where a batch's shards are written: `execution.shard_dir/<batch>` (reachable from every node), else the
    batch's staging folder."""
    root = config.execution.shard_dir
    return Path(root).resolve() / batch_id / "shards" if root else Path(batch_folder).resolve() / "shards"


def measure_batch_shifts(config: SMDAConfig, policy, pairs: pa.Table, *, folder: Path,
                         on_shard: Callable[[dict, int, int], None] | None = None, runtime=None):
    """ΔX, ΔY, ΔP of every pair of a batch with the configured engine; a `ShardRun` (result, engine, address, shards).

    engine `local` loads the model here (or uses `runtime`) and runs the step over all pairs;
    engine `ray` runs it as one task per `execution.shard_size` pairs and concatenates the shards.
    """
    step, result_type = shift_step(config, policy)
    if config.execution.engine == "local":
        import time

        from smda_core.runtime import load_runtime

        t0 = time.perf_counter()
        result = step(runtime or load_runtime(config, progress=False), pairs)
        return ShardRun(result, "local", None, [{"shard": 0, "pair_ids": list(result.pair_ids), "attempts": 1,
                                                 "seconds": time.perf_counter() - t0}])
    from smda_core.execution.ray_engine import run_shards
    from smda_core.sources import resolve_sources

    return run_shards(config.execution, config, resolve_sources(config, progress=False), step, pairs, ShardStore(Path(folder)),
                      result_type, on_shard=on_shard)


def on_engine(config: SMDAConfig, fn: Callable, *args):
    """`fn(*args)` where the config's pair steps run: here (local), or as one Ray task (ray), retried like a shard.

    For a batch-wide numpy step (attribution: its calibrated scores compare the batch's pairs with
    each other, so it is one task per batch, not per shard); the result comes back through Ray.
    """
    if config.execution.engine == "local":
        return fn(*args)
    from smda_core.execution.ray_engine import run_task

    return run_task(config.execution, fn, *args)
