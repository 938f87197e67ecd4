"""What the model runtime measures, as plain arrays: the probe readout and the pairs' shifts.

These are the values that pass from the steps that run the model to the numpy steps (policy,
attribution), so this module imports neither torch nor a model. Each converts to and from a
flat dict of arrays (`as_arrays` / `from_arrays`) that `smda_core.store.arrays` writes as NPZ
without pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from smda_core.config import ShiftSettings
from smda_core.errors import SMDAError


@dataclass
class ProbeScores:
    """The base model on the probes: sparse features (COO), behaviour y, refusal_prob, refused.

    Shapes: per probe (n,): probe_ids, category, harmful, refused, behaviour, refusal_prob;
    COO over (probe index, SAE feature) with activation ≠ 0: coo_probe, coo_feature, coo_value; `maxima` the
    same over each feature's strongest activation on the request's tokens (None where not read).
    """

    probe_ids: np.ndarray
    category: np.ndarray
    harmful: np.ndarray
    refused: np.ndarray
    refused_source: str  # 'file' or 'greedy'
    behaviour: np.ndarray
    refusal_prob: np.ndarray
    coo_probe: np.ndarray
    coo_feature: np.ndarray
    coo_value: np.ndarray
    extra: dict = field(default_factory=dict)
    maxima: tuple[np.ndarray, ...] | None = None  # COO (probe index, feature, activation, token index) at user_max


@dataclass
class PairShifts:
    """Measured shifts of m pairs over n probes and k policy features (float64 arrays).

    dX_exact / dX_linearised: (m, n, k) raw SAE activation change; dY, dP: (m, n) change of
    the behaviour and of refusal_prob; X_base (n, k); active_flips (m,) from the exact
    re-encoding; prompt_X (m, k) activations on each pair's own prompt; seconds (m,).
    """

    pair_ids: list[str]
    feature_ids: np.ndarray
    X_base: np.ndarray
    y_base: np.ndarray
    p_base: np.ndarray
    dX_exact: np.ndarray
    dX_linearised: np.ndarray
    dY: np.ndarray
    dP: np.ndarray
    active_flips: np.ndarray
    prompt_X: np.ndarray
    seconds: np.ndarray
    settings: ShiftSettings
    response_refuses: np.ndarray | None = None  # (m,) the response opens with a refusal (its response type)
    prompt_coo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # every SAE feature of each pair's prompt (COO)

    ARRAYS = ("feature_ids", "X_base", "y_base", "p_base", "dX_exact", "dX_linearised", "dY", "dP", "active_flips",
              "prompt_X", "seconds")

    def dX(self, mode: str) -> np.ndarray:
        if mode == "exact":
            return self.dX_exact
        if mode == "linearised":
            return self.dX_linearised
        raise SMDAError(f"shifts.delta_x '{mode}' is unknown: use 'exact' or 'linearised'")

    def as_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays (pair ids as unicode) and JSON metadata (the settings), for a pickle-free file."""
        arrays = {name: np.asarray(getattr(self, name)) for name in self.ARRAYS}
        arrays["pair_ids"] = np.asarray(self.pair_ids, dtype=str)
        if self.response_refuses is not None:
            arrays["response_refuses"] = np.asarray(self.response_refuses, dtype=bool)
        if self.prompt_coo is not None:
            arrays.update(zip(("prompt_coo_pair", "prompt_coo_feature", "prompt_coo_value"), map(np.asarray, self.prompt_coo)))
        return arrays, {"settings": self.settings.model_dump()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> PairShifts:
        coo = tuple(arrays[k] for k in ("prompt_coo_pair", "prompt_coo_feature", "prompt_coo_value")) if "prompt_coo_pair" in arrays else None
        return cls(pair_ids=arrays["pair_ids"].tolist(), settings=ShiftSettings(**meta["settings"]),
                   response_refuses=arrays.get("response_refuses"), prompt_coo=coo,
                   **{name: arrays[name] for name in cls.ARRAYS})

    @classmethod
    def concat(cls, parts: list[PairShifts], *, atol: float = 1e-9) -> PairShifts:
        """The shifts of several shards of pairs as one, in the order given.

        A pair's step starts from the base weights, so shards measured apart (other processes,
        other machines) concatenate to what one run over all the pairs measures. The base readout
        (X_base, y_base, p_base) each shard measured must agree to `atol`: a node that reads the
        probes differently (another model file, another dtype) is an error, not an average.
        """
        if not parts:
            raise SMDAError("no shards to concatenate")
        first = parts[0]
        for i, part in enumerate(parts[1:], start=1):
            if not np.array_equal(part.feature_ids, first.feature_ids) or part.settings != first.settings:
                raise SMDAError(f"shard {i} was measured for other policy features or shift settings than shard 0")
            for name in ("X_base", "y_base", "p_base"):
                if not np.allclose(getattr(part, name), getattr(first, name), rtol=0, atol=atol):
                    raise SMDAError(f"shard {i} measured another base readout ({name} differs from shard 0 by more than "
                                    f"{atol}): every worker must load the same model, SAE and dtype")
        stacked = {name: np.concatenate([getattr(p, name) for p in parts]) for name in
                   ("dX_exact", "dX_linearised", "dY", "dP", "active_flips", "prompt_X", "seconds")}
        refuses = None if any(p.response_refuses is None for p in parts) else np.concatenate([p.response_refuses for p in parts])
        coo = None
        if all(p.prompt_coo is not None for p in parts):
            offsets = np.cumsum([0] + [len(p.pair_ids) for p in parts[:-1]])
            coo = (np.concatenate([p.prompt_coo[0] + o for p, o in zip(parts, offsets)]),
                   np.concatenate([p.prompt_coo[1] for p in parts]), np.concatenate([p.prompt_coo[2] for p in parts]))
        return cls(pair_ids=[pid for p in parts for pid in p.pair_ids], feature_ids=first.feature_ids, X_base=first.X_base,
                   y_base=first.y_base, p_base=first.p_base, settings=first.settings, response_refuses=refuses,
                   prompt_coo=coo, **stacked)

    def prompt_features(self, width: int) -> np.ndarray:
        """Every SAE feature of each pair's own prompt, dense (m, width)."""
        out = np.zeros((len(self.pair_ids), width))
        if self.prompt_coo is not None:
            i, f, v = self.prompt_coo
            keep = f < width
            out[i[keep], f[keep]] = v[keep]
        return out

    def __repr__(self) -> str:
        return f"PairShifts(m={len(self.pair_ids)}, n={self.dY.shape[1] if self.dY.ndim == 2 else 0}, k={len(self.feature_ids)}, {json.dumps(self.settings.model_dump())})"


@dataclass
class GradientShifts:
    """First-order shifts of m pairs (the `gradient` tier): per probe ΔY and ΔP (m, n), and the ΔX pathway of
    Δβ as the functionals the tier differentiates (m, F), without per-probe ΔX.

    X_base (n, k), y_base, p_base (n,) at θ; prompt_X (m, k), response_refuses (m,) and prompt_coo from
    the forward pass over each pair's prompt; seconds (m,) per pair; meta: projection, G's cost and size.
    """

    pair_ids: list[str]
    feature_ids: np.ndarray
    X_base: np.ndarray
    y_base: np.ndarray
    p_base: np.ndarray
    dY: np.ndarray
    dP: np.ndarray
    via_x: np.ndarray
    prompt_X: np.ndarray
    seconds: np.ndarray
    settings: ShiftSettings
    response_refuses: np.ndarray | None = None
    prompt_coo: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    meta: dict = field(default_factory=dict)
    method: str = "gradient"

    ARRAYS = ("feature_ids", "X_base", "y_base", "p_base", "dY", "dP", "via_x", "prompt_X", "seconds")

    def as_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {name: np.asarray(getattr(self, name)) for name in self.ARRAYS}
        arrays["pair_ids"] = np.asarray(self.pair_ids, dtype=str)
        arrays["response_refuses"] = np.asarray(self.response_refuses, dtype=bool)
        arrays.update(zip(("prompt_coo_pair", "prompt_coo_feature", "prompt_coo_value"), map(np.asarray, self.prompt_coo)))
        return arrays, {"settings": self.settings.model_dump(), "meta": self.meta, "method": self.method}

    @classmethod
    def concat(cls, parts: list[GradientShifts], *, atol: float = 1e-9) -> GradientShifts:
        """Shards of pairs as one, in the order given (each pair's first-order shift is its own gradient against
        the same G, so shards concatenate to one run); the base readout of every shard must agree to `atol`."""
        if not parts:
            raise SMDAError("no shards to concatenate")
        first = parts[0]
        for i, part in enumerate(parts[1:], start=1):
            if (part.method != first.method or not np.array_equal(part.feature_ids, first.feature_ids)
                    or part.settings != first.settings):
                raise SMDAError(f"shard {i} was measured by another tier, policy or shift settings than shard 0")
            for name in ("X_base", "y_base"):
                if not np.allclose(getattr(part, name), getattr(first, name), rtol=0, atol=atol):
                    raise SMDAError(f"shard {i} measured another base readout ({name} differs from shard 0 by more than "
                                    f"{atol}): every worker must load the same model, SAE and dtype")
        stacked = {name: np.concatenate([getattr(p, name) for p in parts]) for name in
                   ("dY", "dP", "via_x", "prompt_X", "seconds", "response_refuses")}
        offsets = np.cumsum([0] + [len(p.pair_ids) for p in parts[:-1]])
        coo = (np.concatenate([p.prompt_coo[0] + o for p, o in zip(parts, offsets)]),
               np.concatenate([p.prompt_coo[1] for p in parts]), np.concatenate([p.prompt_coo[2] for p in parts]))
        return cls(pair_ids=[pid for p in parts for pid in p.pair_ids], feature_ids=first.feature_ids, X_base=first.X_base,
                   y_base=first.y_base, p_base=first.p_base, settings=first.settings, prompt_coo=coo, meta=first.meta,
                   method=first.method, **stacked)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> GradientShifts:
        coo = tuple(arrays[k] for k in ("prompt_coo_pair", "prompt_coo_feature", "prompt_coo_value"))
        return cls(pair_ids=arrays["pair_ids"].tolist(), settings=ShiftSettings(**meta["settings"]),
                   response_refuses=arrays["response_refuses"], prompt_coo=coo, meta=meta.get("meta", {}),
                   method=meta.get("method", "gradient"), **{name: arrays[name] for name in cls.ARRAYS})
