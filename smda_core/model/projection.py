"""Per-example gradients from one batched backward pass, full or projected (LoGra style), never one example at a time.

A batch of independent examples (probes, or SFT pairs) goes through one forward pass; for a scalar
functional that is a *sum over examples* of per-example terms, one backward pass gives every example's
own gradient, because the parameter gradient of a linear map is a sum over tokens of outer products
`δ_t x_tᵀ` (output gradient by input activation), and the tokens of example b only carry b's term.
Hooks on every `nn.Linear`, `nn.Embedding` and 1-D weight (RMSNorm / LayerNorm gains) record `x_t` in
the forward pass and `δ_t` in the backward pass; the per-example gradient is then assembled per parameter:

* full (`projection=None`): the exact gradient `Σ_t δ_t x_tᵀ` of each parameter, flattened in the order
  of `model.named_parameters()` (small models: the demo, tests);
* projected (`projection=k`): `P_outᵀ (Σ_t δ_t x_tᵀ) P_in = Σ_t (P_outᵀ δ_t)(P_inᵀ x_t)ᵀ`, a k×k block per
  2-D weight, with seeded Gaussian `P` of variance 1/k, so that `E[⟨Pᵀa, Pᵀb⟩] = ⟨a, b⟩`: a
  Kronecker-factored random projection that never forms a full gradient (LoGra, Choe et al. 2024); 1-D
  weights get a dense projection to k dims when they are wider than k.

A tied weight (an input embedding that is also the output head) is one parameter: both modules add into
the same block with the same projections, so its gradient is the sum of both uses, as autograd's is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from smda_core.errors import SMDAError


@dataclass(frozen=True)
class Slot:
    """Where one parameter's (projected) gradient sits in the flat vector, and its projections."""

    name: str
    offset: int
    size: int
    p_out: torch.Tensor | None  # (rows, k_out), or None for identity
    p_in: torch.Tensor | None  # (cols, k_in) for 2-D weights, or None


def _gaussian(seed: int, name: str, rows: int, k: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """A seeded N(0, 1/k) projection (rows, k); the seed mixes the parameter name, so it is stable across runs
    (drawn on the CPU, then moved: the same projection on every device)."""
    mix = int.from_bytes(__import__("hashlib").sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(mix % (2 ** 63))
    return (torch.randn(rows, k, generator=g, dtype=torch.float64) / np.sqrt(k)).to(device=device, dtype=dtype)


class GradientSpace:
    """The flat (projected) gradient space of a model: one slot per covered parameter.

    Args:
        model: a torch module (its parameters' dtype is the space's dtype).
        projection: k per side of the Kronecker projection; None = exact, unprojected gradients.
        parameters: regular expressions over parameter names; only matching parameters are covered
            (None = every parameter with requires_grad).
        seed: seed of the projections.
    """

    def __init__(self, model: torch.nn.Module, projection: int | None = None, parameters: Sequence[str] | None = None,
                 seed: int = 0):
        self.model = model
        self.projection = projection
        dtype = next(model.parameters()).dtype
        self.device = device = next(model.parameters()).device
        patterns = [re.compile(p) for p in parameters] if parameters else None
        self.slots: dict[int, Slot] = {}
        offset = 0
        for name, p in model.named_parameters():  # tied parameters appear once
            if not p.requires_grad or (patterns and not any(r.search(name) for r in patterns)):
                continue
            if p.dim() == 2:
                rows, cols = p.shape
                if projection is None or (projection >= rows and projection >= cols):
                    p_out = p_in = None
                    size = rows * cols
                else:
                    p_out = _gaussian(seed, name + ":out", rows, min(projection, rows), dtype, device)
                    p_in = _gaussian(seed, name + ":in", cols, min(projection, cols), dtype, device)
                    size = p_out.shape[1] * p_in.shape[1]
            elif p.dim() == 1:
                p_in = None
                p_out = None if projection is None or p.numel() <= projection else _gaussian(seed, name, p.numel(), projection, dtype, device)
                size = p.numel() if p_out is None else projection
            else:
                raise SMDAError(f"parameter {name} has {p.dim()} dimensions: per-example gradients cover 1-D and 2-D "
                                f"parameters only (set gradient.parameters to leave it out)")
            self.slots[id(p)] = Slot(name, offset, size, p_out, p_in)
            offset += size
        self.dim = offset
        if not self.slots:
            raise SMDAError("gradient.parameters matches no parameter of the model")
        self._check_coverage()

    def _check_coverage(self) -> None:
        covered = set()
        for module in self.model.modules():
            for kind, params in _module_params(module):
                covered.update(id(p) for p in params if p is not None)
        missing = [s.name for pid, s in self.slots.items() if pid not in covered]
        if missing:
            raise SMDAError(f"no per-example gradient rule for parameters {missing[:5]}: they belong to modules other than "
                            f"Linear, Embedding or a norm; leave them out with gradient.parameters")

    def capture(self, batch_size: int) -> "Capture":
        return Capture(self, batch_size)


def _module_params(module: torch.nn.Module) -> list[tuple[str, list]]:
    if isinstance(module, torch.nn.Linear):
        return [("linear", [module.weight, module.bias])]
    if isinstance(module, torch.nn.Embedding):
        return [("embedding", [module.weight])]
    own = dict(module.named_parameters(recurse=False))
    w = own.get("weight")
    if w is not None and w.dim() == 1 and set(own) <= {"weight", "bias"}:
        return [("norm", [w, own.get("bias")])]
    return []


class Capture:
    """Context manager: hooks that record inputs and output gradients; `gradients()` assembles (B, D) per backward.

    Use: `with space.capture(B) as cap: out = forward(); for f in functionals: f.backward(retain_graph=True);
    g = cap.gradients()` — each `gradients()` consumes the output gradients of the last backward pass.
    """

    def __init__(self, space: GradientSpace, batch_size: int):
        self.space = space
        self.batch_size = batch_size
        self.records: list[tuple[str, torch.nn.Module, torch.Tensor, torch.Tensor | None]] = []
        self.deltas: dict[int, torch.Tensor] = {}
        self.handles = []

    def __enter__(self) -> "Capture":
        for module in self.space.model.modules():
            for kind, params in _module_params(module):
                if any(p is not None and id(p) in self.space.slots for p in params):
                    self.handles.append(module.register_forward_hook(self._forward_hook(kind)))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.records.clear()
        self.deltas.clear()
        return False

    def _forward_hook(self, kind: str):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if kind == "embedding":
                saved = inputs[0].detach()
            elif kind == "norm":
                b = getattr(module, "bias", None)
                y = out.detach() - (b.detach() if b is not None else 0)
                w = module.weight.detach()
                saved = y / torch.where(w == 0, torch.ones_like(w), w)  # x̂ of y = w ⊙ x̂ (+ b)
            else:
                saved = inputs[0].detach()
            index = len(self.records)
            self.records.append((kind, module, saved, None))
            if out.requires_grad:
                out.register_hook(lambda g, i=index: self.deltas.__setitem__(i, g.detach()))
        return hook

    def gradients(self, *, summed: bool = False) -> torch.Tensor:
        """(B, D) per-example gradients of the last backward pass (zeros for modules it did not reach);
        `summed`: their sum over the batch, (1, D), without forming the per-example ones."""
        space = self.space
        dtype = next(space.model.parameters()).dtype
        B = 1 if summed else self.batch_size
        out = torch.zeros(B, space.dim, dtype=dtype, device=space.device)
        for i, (kind, module, saved, _) in enumerate(self.records):
            delta = self.deltas.get(i)
            if delta is None:
                continue
            delta = delta.to(dtype).reshape(B, -1, delta.shape[-1])  # (B, T, out)
            if kind == "linear":
                x = saved.to(dtype).reshape(B, -1, saved.shape[-1])
                self._add(out, module.weight, _outer(delta, x, *self._proj(module.weight)))
                if module.bias is not None:
                    self._add(out, module.bias, _vector(delta.sum(1), self._proj(module.bias)[0]))
            elif kind == "embedding":
                ids = saved.reshape(B, -1)
                slot = space.slots.get(id(module.weight))
                if slot is None:
                    continue
                if slot.p_out is None:  # exact: scatter δ_t into row id_t
                    g = torch.zeros(B, *module.weight.shape, dtype=dtype, device=delta.device)
                    g.scatter_add_(1, ids[..., None].expand(-1, -1, delta.shape[-1]), delta)
                    self._add(out, module.weight, g.reshape(B, -1))
                else:  # Σ_t P_out[id_t] ⊗ (P_inᵀ δ_t)
                    rows = slot.p_out[ids]  # (B, T, k_out)
                    self._add(out, module.weight, torch.einsum("bto,bti->boi", rows, delta @ slot.p_in).reshape(B, -1))
            else:  # norm gain (and bias)
                xhat = saved.to(dtype).reshape(B, -1, saved.shape[-1])
                self._add(out, module.weight, _vector((delta * xhat).sum(1), self._proj(module.weight)[0]))
                if getattr(module, "bias", None) is not None:
                    self._add(out, module.bias, _vector(delta.sum(1), self._proj(module.bias)[0]))
        self.deltas.clear()
        return out

    def _proj(self, p: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        slot = self.space.slots.get(id(p))
        return (slot.p_out, slot.p_in) if slot is not None else (None, None)

    def _add(self, out: torch.Tensor, p: torch.Tensor, g: torch.Tensor) -> None:
        slot = self.space.slots.get(id(p))
        if slot is not None:
            out[:, slot.offset: slot.offset + slot.size] += g


def _outer(delta: torch.Tensor, x: torch.Tensor, p_out: torch.Tensor | None, p_in: torch.Tensor | None) -> torch.Tensor:
    """Σ_t δ_t x_tᵀ per example, (B, out·in), or its projection (B, k_out·k_in)."""
    if p_out is not None:
        delta, x = delta @ p_out, x @ p_in
    return torch.einsum("bto,bti->boi", delta, x).reshape(delta.shape[0], -1)


def _vector(g: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    return g if p is None else g @ p
