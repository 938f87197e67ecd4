"""The Ray engine: one Ray task per shard of pairs, the model loaded once per worker process (and a
batch-wide numpy step, attribution, as one task: :func:`run_task`).

Ray is optional (`pip install smda-warehouse[ray]`) and imported only here, only when the
config says `execution.engine: ray`. With `execution.address` empty the command starts a local
Ray (one machine, no dashboard); with `auto` or `ray://host:port` it joins an existing cluster,
whose workers need this package (a runtime environment, or an image that has it) and a shard
folder they can all reach.

Fault tolerance is Ray's: a shard whose worker process dies (killed, out of memory, node lost)
is run again, up to `execution.max_retries` times, from the pair step's start (its partial
files are never read: the manifest comes last). An error raised by the step itself (a bad pair)
would fail again and is not retried; either way a shard that fails for good fails the batch
with the pair ids it held (:class:`ShardError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from smda_core.config import ExecutionSettings, SMDAConfig
from smda_core.errors import SMDAError
from smda_core.execution.shards import PairStep, Shard, ShardError, ShardRun, ShardStore, plan_shards
from smda_core.sources import Sources

log = logging.getLogger(__name__)

_RUNTIMES: dict[str, object] = {}  # in each Ray worker process: the model runtime of the last config it served


def _ray():
    try:
        import ray
    except ImportError:
        raise SMDAError("execution.engine 'ray' needs Ray: pip install 'smda-warehouse[ray]' (or set engine: local)") from None
    return ray


def connect(settings: ExecutionSettings) -> str:
    """Join the configured Ray cluster, or start a local Ray (no dashboard); returns the address in use.

    A Ray already initialised in this process (a test's, a notebook's) is used as it is.
    """
    ray = _ray()
    if not ray.is_initialized():
        if settings.address:
            ray.init(address=settings.address, runtime_env=settings.runtime_env, logging_level=logging.WARNING,
                     log_to_driver=False)
        else:
            ray.init(num_cpus=settings.local_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, runtime_env=_local_runtime_env(settings.runtime_env))
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # a Ray client connection (ray://) has no GCS address of its own
        return settings.address or "local"


def _local_runtime_env(extra: dict | None) -> dict:
    """A local Ray's workers import this very checkout (the one the driver imported), whatever their cwd."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(extra or {})
    env["env_vars"] = {"PYTHONPATH": path, **(env.get("env_vars") or {})}
    return env


def absolute_sources(sources: Sources) -> Sources:
    """Sources with local paths made absolute: a worker's working directory is not the command's."""
    def absolute(value):
        return str(Path(value).resolve()) if isinstance(value, str) and Path(value).exists() else value

    return dataclasses.replace(sources, model=absolute(sources.model), probes=absolute(sources.probes),
                               sae={k: absolute(v) for k, v in sources.sae.items()})


def _worker_runtime(config: dict, sources: Sources):
    """The model runtime for this config, loaded once per worker process and kept for its next shards."""
    from smda_core.runtime import load_runtime

    key = hashlib.sha256(json.dumps([config, dataclasses.asdict(sources)], sort_keys=True, default=str).encode()).hexdigest()
    if key not in _RUNTIMES:
        _RUNTIMES.clear()  # one model per worker: a new config replaces the old one
        _RUNTIMES[key] = load_runtime(SMDAConfig.model_validate(config), sources=sources, progress=False)
    return _RUNTIMES[key]


def _run_shard(config: dict, sources: Sources, step: PairStep, pairs: pa.Table, shard: Shard, folder: str) -> dict:
    """One Ray task: the pair step over one shard, written as the shard's file and then its manifest."""
    store = ShardStore(Path(folder))
    runtime = _worker_runtime(config, sources)
    store.started(shard)
    t0 = time.perf_counter()
    result = step(runtime, pairs)
    return store.write(shard, result, seconds=time.perf_counter() - t0)


def _with_runtime(config: dict, sources: Sources, fn: Callable, kwargs: dict):
    """One Ray task: `fn(runtime, **kwargs)` with this worker's cached model runtime."""
    return fn(_worker_runtime(config, sources), **kwargs)


def run_with_runtime(settings: ExecutionSettings, config: SMDAConfig, sources: Sources, fn: Callable, **kwargs):
    """`fn(runtime, **kwargs)` as one Ray task on a worker with the model loaded (and kept there for its shards),
    with a shard task's resources: the gradient tier's G is computed this way, on the workers' devices."""
    ray = _ray()
    connect(settings)
    task = ray.remote(_with_runtime).options(num_cpus=settings.cpus_per_task, num_gpus=settings.gpus_per_task,
                                             max_retries=settings.max_retries, retry_exceptions=False,
                                             name=f"smda-{getattr(fn, '__name__', 'task')}",
                                             **({"memory": settings.memory_mb * 2**20} if settings.memory_mb else {}))
    try:
        return ray.get(task.remote(config.model_dump(), absolute_sources(sources), fn, kwargs))
    except ray.exceptions.RayError as exc:
        raise SMDAError(f"{getattr(fn, '__name__', 'task')} on Ray failed: {_cause(exc)}") from None


def run_shards(settings: ExecutionSettings, config: SMDAConfig, sources: Sources, step: PairStep, pairs: pa.Table,
               store: ShardStore, result_type: type, *,
               on_shard: Callable[[dict, int, int], None] | None = None) -> ShardRun:
    """Run `step` as one Ray task per shard of `pairs`, wait for all, and concatenate the complete shards.

    `on_shard(record, done, total)` is called as each shard completes (progress). Raises
    :class:`ShardError` naming the pairs of every shard that failed for good; then nothing is returned.
    """
    ray = _ray()
    address = connect(settings)
    shards = plan_shards(pairs["pair_id"].to_pylist(), settings.shard_size)
    store.clear()
    task = ray.remote(_run_shard)
    options = dict(num_cpus=settings.cpus_per_task, num_gpus=settings.gpus_per_task, max_retries=settings.max_retries,
                   retry_exceptions=False, **({"memory": settings.memory_mb * 2**20} if settings.memory_mb else {}))
    config_ref = ray.put(config.model_dump())
    sources = absolute_sources(sources)
    pending = {task.options(**options, name=f"smda-{s.name}").remote(config_ref, sources, step, pairs.slice(s.start, s.stop - s.start),
                                                         s, str(store.folder)): s for s in shards}
    records, failed = [], {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(ready[0])
        try:
            record = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            failed[shard] = _cause(exc)
            log.warning("%s failed for good: %s", shard.name, failed[shard])
            continue
        record["attempts"] = max(1, len(store.attempts(shard)))
        records.append(record)
        if on_shard is not None:
            on_shard(record, len(records), len(shards))
    if failed:
        raise ShardError("; ".join(f"{s.name} failed after {1 + settings.max_retries} tries at most ({why}); its pairs: "
                                   f"{', '.join(s.pair_ids)}" for s, why in sorted(failed.items(), key=lambda i: i[0].index)),
                         shards={s.index: list(s.pair_ids) for s in failed})
    result = store.gather(shards, result_type)
    return ShardRun(result, "ray", address, sorted(records, key=lambda r: r["shard"]))


def _cause(exc: Exception) -> str:
    """The failing step's own error where Ray wraps one, else Ray's (a worker that died)."""
    cause = getattr(exc, "cause", None)
    text = str(cause) if cause is not None else str(exc)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_task(settings: ExecutionSettings, fn: Callable, *args):
    """`fn(*args)` as one Ray task (the resources and retries of a shard task); its error as an SMDAError."""
    ray = _ray()
    connect(settings)
    task = ray.remote(fn).options(num_cpus=settings.cpus_per_task, max_retries=settings.max_retries, retry_exceptions=False,
                                  name=f"smda-{getattr(fn, '__name__', 'task')}")
    try:
        return ray.get(task.remote(*args))
    except ray.exceptions.RayError as exc:
        raise SMDAError(f"{getattr(fn, '__name__', 'task')} on Ray failed: {_cause(exc)}") from None
