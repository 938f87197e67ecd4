"""Shards of pairs: the unit of work beyond one process, and their files.

A *pair step* measures some pairs with the model: ``step(runtime, pairs) -> result``, where
`pairs` is a slice of the batch's SFT table and `result` a PairShifts-like value (it has
``as_arrays()``, ``from_arrays(arrays, meta)`` and ``concat(parts)``). Every tier of DESIGN §4
is one: :func:`exact_shift_step`, :func:`gradient_shift_step` (G read from the batch's G file, once
per worker process) and :func:`screen_shift_step`; the engines run each unchanged.

A pair's step starts from the base weights and restores them, so the result of a pair does
not depend on the other pairs: shards measured anywhere concatenate, in pair order, to the
result of one run over the batch.

Each shard's result is one file written by the task that measured it, then its manifest,
written last (atomically), which names the file's SHA-256 and the shard's pair ids:

    <shard folder>/shard-00003.npz              (the result's arrays; NPZ without pickle)
                  /shard-00003.json             (manifest: pair ids, sha256, seconds, host, pid)
                  /shard-00003.started-<pid>.json   (one per attempt: where and when it began)

A shard without its manifest is not there; a retried shard overwrites its own file. Only a
batch whose every shard is complete is concatenated and passed on (to attribution, then the
one DuckDB writer); nothing partial is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from smda_core.errors import SMDAError
from smda_core.hashing import file_sha256
from smda_core.inputs.pairs import pair_rows
from smda_core.store.arrays import load_arrays, save_arrays

SHARD_SCHEMA = "pair_step_shard"
SHARD_VERSION = 1


class ShardResult(Protocol):
    """What a pair step returns: arrays for a pickle-free file, and a way to join shards."""

    pair_ids: list[str]

    def as_arrays(self) -> tuple[dict[str, np.ndarray], dict]: ...

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> ShardResult: ...

    @classmethod
    def concat(cls, parts: list[ShardResult]) -> ShardResult: ...


PairStep = Callable[[Any, pa.Table], ShardResult]  # (ModelRuntime, pairs) -> result


class ShardError(SMDAError):
    """A shard failed for good (after its retries); names the pairs it held."""

    def __init__(self, message: str, *, shards: dict[int, list[str]]):
        self.shards = shards
        super().__init__(message)


@dataclass(frozen=True)
class Shard:
    """Pairs `start:stop` of a batch (in the batch's order), shard number `index`."""

    index: int
    start: int
    stop: int
    pair_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(pair_ids: Sequence[str], shard_size: int) -> list[Shard]:
    """Consecutive shards of at most `shard_size` pairs covering every pair once, in order."""
    if shard_size < 1:
        raise SMDAError(f"execution.shard_size must be ≥ 1, got {shard_size}")
    ids = list(pair_ids)
    return [Shard(i, start, min(start + shard_size, len(ids)), tuple(ids[start:start + shard_size]))
            for i, start in enumerate(range(0, len(ids), shard_size))]


_BASES: list = []  # in each process: (runtime, the exact tier's measurement base) for the last batch measured


def exact_shift_step(runtime, pairs: pa.Table, *, feature_ids: np.ndarray, settings) -> ShardResult:
    """The exact tier (DESIGN §4): one optimiser step per pair, every probe re-measured (a PairShifts). The base
    readout is taken once per process and batch, not once per shard."""
    from smda_core.model.shifts import measure_pair_shifts, measurement_base

    ids = np.asarray(feature_ids, dtype=np.int64)
    cached = _BASES[0] if _BASES else None
    if not (cached and cached[0] is runtime and cached[1].matches(ids, settings)):
        _BASES.clear()  # the runtime is held, so another runtime can never pass for it
        _BASES.append((runtime, measurement_base(runtime.model, runtime.sae, runtime.probe_setup(), ids, settings)))
    return measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, runtime.probe_setup(), ids,
                               pair_rows(pairs), settings, progress=False, base=_BASES[0][1])


_TIERS: dict[str, object] = {}  # in each worker process: the gradient tier prepared for the last G it loaded


def prepare_gradient_tier(runtime, *, feature_ids: np.ndarray, x_weights: np.ndarray, folder: str,
                          progress: bool = False) -> tuple[str, str]:
    """G for this policy, read from `folder` when computed before (another batch, an earlier run) or computed and
    saved there; the prepared tier stays in this process for the shard steps that follow. Returns (key, G file)."""
    from smda_core.model.gradient_cache import cached_probe_gradients

    cfg = runtime.config
    tier, key, path = cached_probe_gradients(Path(folder), runtime.model, runtime.sae, runtime.probe_setup(), feature_ids,
                                             x_weights, cfg.shifts, cfg.gradient, progress=progress)
    _TIERS.clear()
    _TIERS[key] = tier
    return key, str(path)


def release_gradient_tier() -> None:
    """Drop what this process prepared for the pair steps: the gradient tier (its G and model copies) and the
    exact tier's measurement base."""
    _TIERS.clear()
    _BASES.clear()


def gradient_shift_step(runtime, pairs: pa.Table, *, feature_ids: np.ndarray, g_file: str, key: str) -> ShardResult:
    """The gradient tier (DESIGN §4) over a shard: G read once per worker process from the batch's G file
    (computed by the step that planned the shards), then one batched backward pass per pair batch."""
    from smda_core.model.gradients import GradientTier, ProbeGradients

    if key not in _TIERS:
        _TIERS.clear()  # one prepared tier per worker: G is probes × gradient dimension floats
        cfg = runtime.config
        _TIERS[key] = GradientTier.prepare(runtime.model, runtime.sae, runtime.probe_setup(), feature_ids, None, cfg.shifts,
                                           cfg.gradient, probe_grads=ProbeGradients.load(Path(g_file), key=key))
    return _TIERS[key].shifts(runtime.tokenizer, pair_rows(pairs))


def screen_shift_step(runtime, pairs: pa.Table, *, feature_ids: np.ndarray, X_base: np.ndarray,
                      y_base: np.ndarray) -> ShardResult:
    """The screen tier (DESIGN §4) over a shard: one forward pass over each pair's prompt, no shift (a GradientShifts
    with method 'screen' and empty shift arrays)."""
    from smda_core.model.gradients import screen_pairs
    from smda_core.model.measurements import GradientShifts

    screen = screen_pairs(runtime.model, runtime.tokenizer, runtime.sae, runtime.probe_setup(), feature_ids, pair_rows(pairs),
                          batch_size=runtime.config.shifts.batch_size)
    m, n = len(screen.pair_ids), len(y_base)
    empty = np.zeros((m, 0))
    return GradientShifts(screen.pair_ids, np.asarray(feature_ids), X_base, y_base, np.full(n, np.nan), empty, empty, empty,
                          screen.prompt_X, screen.seconds, runtime.config.shifts, response_refuses=screen.response_refuses,
                          prompt_coo=screen.prompt_coo, method="screen")


@dataclass(frozen=True)
class ShardStore:
    """The shard files of one batch's pair step (a folder every node can reach)."""

    folder: Path

    def clear(self) -> None:
        """Remove the shards of an earlier run (before a new run starts)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def started(self, shard: Shard, attempt: dict | None = None) -> Path:
        """Record that an attempt at `shard` began here (host, pid, time): one file per attempt."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{shard.name}.started-{os.getpid()}.json"
        path.write_text(json.dumps({"shard": shard.index, "host": socket.gethostname(), "pid": os.getpid(),
                                    "at": time.time(), **(attempt or {})}))
        return path

    def attempts(self, shard: Shard) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob(f"{shard.name}.started-*.json"))]

    def write(self, shard: Shard, result: ShardResult, *, seconds: float) -> dict:
        """The shard's arrays, then its manifest (last, atomically): the shard is complete."""
        if list(result.pair_ids) != list(shard.pair_ids):
            raise SMDAError(f"{shard.name}: the step returned pairs {list(result.pair_ids)[:3]}…, "
                            f"not the shard's {list(shard.pair_ids)[:3]}…")
        arrays, meta = result.as_arrays()
        path = save_arrays(self.folder / f"{shard.name}.npz", arrays, schema=SHARD_SCHEMA, version=SHARD_VERSION,
                           meta={**meta, "result": type(result).__name__})
        manifest = {"shard": shard.index, "start": shard.start, "stop": shard.stop, "pair_ids": list(shard.pair_ids),
                    "file": path.name, "sha256": file_sha256(path), "seconds": seconds, "host": socket.gethostname(),
                    "pid": os.getpid()}
        tmp = self.folder / f"{shard.name}.json.tmp"
        tmp.write_text(json.dumps(manifest))
        tmp.replace(self.folder / f"{shard.name}.json")
        return manifest

    def manifest(self, shard: Shard) -> dict | None:
        path = self.folder / f"{shard.name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def read(self, shard: Shard, result_type: type) -> ShardResult:
        """One complete shard's result, checked against its manifest (pair ids, SHA-256 of the file)."""
        manifest = self.manifest(shard)
        if manifest is None:
            raise SMDAError(f"{shard.name} in {self.folder} is not complete (no manifest); pairs: {', '.join(shard.pair_ids)}")
        path = self.folder / manifest["file"]
        if manifest["pair_ids"] != list(shard.pair_ids) or file_sha256(path) != manifest["sha256"]:
            raise SMDAError(f"{path}: does not match its manifest (pair ids or SHA-256); run the batch again")
        arrays, meta = load_arrays(path, schema=SHARD_SCHEMA, version=SHARD_VERSION)
        return result_type.from_arrays(arrays, meta)

    def gather(self, shards: Sequence[Shard], result_type: type) -> ShardResult:
        """Every shard's result, concatenated in pair order (all must be complete)."""
        missing = [s for s in shards if self.manifest(s) is None]
        if missing:
            raise ShardError(f"{len(missing)} shard(s) in {self.folder} are not complete: "
                             + "; ".join(f"{s.name} (pairs {', '.join(s.pair_ids)})" for s in missing),
                             shards={s.index: list(s.pair_ids) for s in missing})
        return result_type.concat([self.read(s, result_type) for s in shards])


@dataclass(frozen=True)
class ShardRun:
    """A batch's pair step run over shards: the concatenated result, where it ran, each shard's record."""

    result: object
    engine: str
    address: str | None
    shards: list[dict]  # each shard's manifest plus `attempts` (1 = not retried)

    @property
    def retried(self) -> list[int]:
        return [s["shard"] for s in self.shards if s.get("attempts", 1) > 1]
