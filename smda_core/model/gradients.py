"""The `gradient` and `screen` tiers (DESIGN §4 "Three tiers"): first-order shifts without re-measuring the probes.

For one plain SGD step of size η on pair i, every probe functional F moves by `ΔF ≈ −η ∇F · g_i` with
`g_i = ∇_θ L(s_i)`. The functionals are the ones the exact tier re-measures: each probe's refusal
log-probability `log Σ_r P(r | p)` (and the compliance one for `contrast`), from which ΔY, ΔP and Δℓ
follow, and each policy feature's activation `X_pl` on each probe where it is active (an inactive TopK /
ReLU feature has zero gradient). Their gradients G are computed once, in chunks of probes, with one
backward pass per functional column (`projection.Capture`); each pair then costs one forward and backward
pass (batched over pairs) and a product with G. The result is a `PairShifts` with the exact tier's
fields, so the attribution, scores and tables consume it unchanged; Δβ then follows the `linear`
formulas, whose pathways split by stopping the gradient through y (ΔX) or through Z (ΔY).

`screen` runs no gradient at all: one forward pass over each pair's own prompt gives its SAE features,
so the policy can be read on it (`screen_consistency`, the projection on the policy direction).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from smda_core.config import GradientSettings, ShiftSettings
from smda_core.errors import ConfigError, SMDAError
from smda_core.model.chat import EncodedPrompt, context_length, encode_pair, encode_prompt
from smda_core.model.loading import capture_residual
from smda_core.model.measurements import GradientShifts
from smda_core.model.projection import GradientSpace
from smda_core.model.readout import _branches, pool_features, read_probes
from smda_core.model.shifts import _TORCH_DTYPES, ProbeSetup, _measurement_copies, _opens_with, _read
from smda_core.model.training import IGNORE, pad_sequences, sft_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeGradients:
    """G: the (projected) gradients at θ of the probe functionals, one row each.

    logr (n, D): each probe's refusal log-probability; logc (n, D) or None: its compliance one (contrast);
    xf (F, D): the fixed linear functionals `Σ_pl W_fpl X_pl` of the policy features' activations (the
    ΔX pathway of Δβ). Stored in `dtype` (float32 halves the memory; the products stay far more precise
    than the first-order approximation).
    """

    logr: torch.Tensor
    logc: torch.Tensor | None
    xf: torch.Tensor
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logr, self.xf) + ((self.logc,) if self.logc is not None else ()))

    def to(self, device) -> ProbeGradients:
        """G on another device (itself when already there)."""
        if self.logr.device == torch.device(device):
            return self
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ProbeGradients(move(self.logr), move(self.logc), move(self.xf), self.seconds)

    def save(self, path: Path, *, key: str) -> Path:
        """G as a safetensors file (no code runs on load), written atomically; `key` names what it was computed from."""
        from safetensors.torch import save_file

        tensors = {"logr": self.logr.cpu().contiguous(), "xf": self.xf.cpu().contiguous()}
        if self.logc is not None:
            tensors["logc"] = self.logc.cpu().contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata={"key": key, "seconds": repr(self.seconds), "schema": "probe_gradients/1"})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, *, key: str) -> ProbeGradients:
        """G from a file written by :meth:`save` for the same `key` (anything else is an error naming the file)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("schema") != "probe_gradients/1" or meta.get("key") != key:
                raise SMDAError(f"{path}: not the probe gradients of this model, policy and settings "
                                f"(key {meta.get('key')!r}, expected {key!r})")
            logc = f.get_tensor("logc") if "logc" in f.keys() else None
            return cls(f.get_tensor("logr"), logc, f.get_tensor("xf"), float(meta["seconds"]))


@dataclass(frozen=True)
class ScreenResult:
    """Forward only: each pair's own prompt read through the SAE, and its response type."""

    pair_ids: list[str]
    prompt_X: np.ndarray  # (m, k) policy features of each pair's prompt
    prompt_coo: tuple[np.ndarray, np.ndarray, np.ndarray]  # every SAE feature of each pair's prompt
    response_refuses: np.ndarray  # (m,)
    seconds: np.ndarray  # (m,)


def check_first_order(settings: ShiftSettings) -> None:
    """The gradient tier models one plain SGD step: anything else is an error naming the setting."""
    if settings.optimizer != "sgd" or settings.steps != 1 or settings.weight_decay != 0:
        raise ConfigError(f"shifts.method=gradient models one plain SGD step (shifts.optimizer=sgd, steps=1, "
                          f"weight_decay=0); got optimizer={settings.optimizer}, steps={settings.steps}, "
                          f"weight_decay={settings.weight_decay}: use shifts.method=exact for other updates")


def _probe_functionals(model, sae, setup: ProbeSetup, prompts, feature_ids: np.ndarray, openings, n_ref: int):
    """One differentiable pass over probes: (log Σ refusal, log Σ compliance or None, X (B, k)), and the row → probe map."""
    branches = _branches(openings)
    rows = [(i, b) for i in range(len(prompts)) for b in range(len(branches))]
    seqs = [list(prompts[i].input_ids) + list(branches[b]) for i, b in rows]
    ids, mask, _ = pad_sequences(seqs, setup.pad_id)
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)
    device = next(model.parameters()).device
    with capture_residual(model, setup.hook_layer) as store:
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device)).logits
    resid = store["h"]
    scores = []
    for o in openings:  # the row of the branch that teacher-forces opening o
        b = next(j for j, br in enumerate(branches) if br[: len(o) - 1] == tuple(o[:-1]))
        r = torch.tensor([row for row, (_, bb) in enumerate(rows) if bb == b], device=device)
        last = torch.tensor([len(prompts[i].input_ids) - 1 for i, bb in rows if bb == b], device=device)
        s = sum(torch.log_softmax(logits[r, last + t], dim=-1)[:, o[t]] for t in range(len(o)))
        scores.append(s)
    scores = torch.stack(scores, 1)  # (B, n_openings)
    logr = torch.logsumexp(scores[:, :n_ref], 1)
    logc = torch.logsumexp(scores[:, n_ref:], 1) if scores.shape[1] > n_ref else None
    first = torch.tensor([row for row, (_, b) in enumerate(rows) if b == 0])
    cols = torch.as_tensor(np.array(feature_ids, dtype=np.int64), device=sae.W_enc.device)
    X = []
    for k, row in enumerate(first.tolist()):
        pos = list(prompts[k].read_positions(setup.position))
        acts = sae.encode(resid[row, pos].to(sae.W_enc.device, sae.W_enc.dtype))
        X.append(pool_features(acts, setup.position)[cols])
    row_probe = torch.tensor([i for i, _ in rows], device=device)
    return logr, logc, torch.stack(X), row_probe, len(rows)


def probe_gradients(model, sae, setup: ProbeSetup, feature_ids: np.ndarray, space: GradientSpace,
                    x_weights: np.ndarray, *, batch_size: int = 32, dtype: torch.dtype = torch.float32,
                    progress: bool = False) -> ProbeGradients:
    """G over all probes, in chunks: per chunk one forward pass, one backward pass for the probes' own
    refusal log-probabilities (per-example rows) and one per functional of ΔX (`x_weights` (F, n, k) on the
    raw activations; summed over the chunk's probes)."""
    t0 = time.perf_counter()
    contrast = setup.behaviour == "contrast"
    openings = list(setup.refusal_openings) + (list(setup.compliance_openings) if contrast else [])
    n_ref = len(setup.refusal_openings)
    n = len(setup.prompts)
    W = torch.as_tensor(np.asarray(x_weights, dtype=np.float64)).to(next(model.parameters()))
    G_r = torch.zeros(n, space.dim, dtype=dtype)
    G_c = torch.zeros(n, space.dim, dtype=dtype) if contrast else None
    G_x = torch.zeros(W.shape[0], space.dim, dtype=dtype)
    leaf = next(p for p in model.parameters() if p.requires_grad)
    n_rows = len(_branches(openings))
    bar = tqdm(range(0, n, batch_size), desc="probe gradients", disable=not progress, mininterval=1.0)
    for start in bar:
        chunk = list(setup.prompts[start: start + batch_size])
        B = len(chunk)
        with space.capture(B * n_rows) as cap:
            logr, logc, X, row_probe, _ = _probe_functionals(model, sae, setup, chunk, feature_ids, openings, n_ref)

            def per_probe(scalar: torch.Tensor) -> torch.Tensor:
                torch.autograd.grad(scalar, leaf, retain_graph=True, allow_unused=True)
                g = cap.gradients()  # (rows, D): rows of the same probe add up
                return torch.zeros(B, space.dim, dtype=g.dtype, device=g.device).index_add_(0, row_probe, g).to("cpu", dtype)

            G_r[start: start + B] = per_probe(logr.sum())
            if contrast:
                G_c[start: start + B] = per_probe(logc.sum())
            Wc = W[:, start: start + B]  # (F, B, k)
            for f in range(W.shape[0]):
                torch.autograd.grad((Wc[f] * X).sum(), leaf, retain_graph=True, allow_unused=True)
                G_x[f] += cap.gradients(summed=True)[0].to("cpu", dtype)
    return ProbeGradients(G_r, G_c, G_x, time.perf_counter() - t0)


def pair_gradients(model, space: GradientSpace, encoded: Sequence[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """(B, D) gradients of each pair's own SFT loss (mean cross-entropy over its response tokens), one batched pass."""
    batch = sft_batch(encoded, pad_id)
    B = len(encoded)
    leaf = next(p for p in model.parameters() if p.requires_grad)
    with space.capture(B) as cap:
        logits = model(input_ids=batch.input_ids.to(leaf.device), attention_mask=batch.attention_mask.to(leaf.device)).logits
        targets = torch.nn.functional.pad(batch.labels.to(leaf.device), (0, 1), value=IGNORE)[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        counts = (targets != IGNORE).sum(1).clamp_min(1)
        losses = ce.sum(1) / counts  # each pair's own mean, as the exact tier's one-pair step uses
        torch.autograd.grad(losses.sum(), leaf, allow_unused=True)
        return cap.gradients()


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str, str]], context: int
                 ) -> tuple[list[EncodedPrompt], list[tuple[list[int], int]]]:
    """Each pair's prompt (as the screen reads it) and prompt + response (as SFT trains on it), the prompt
    tokenised once."""
    heads = [encode_prompt(tokenizer, p, name=f"pair {pid}") for pid, p, _ in pairs]
    full = [encode_pair(tokenizer, p, resp, name=f"pair {pid}", max_tokens=context, head=h)
            for (pid, p, resp), h in zip(pairs, heads)]
    return heads, full


def screen_pairs(model, tokenizer, sae, setup: ProbeSetup, feature_ids: np.ndarray, pairs: Sequence[tuple[str, str, str]],
                 *, batch_size: int = 64, encoded: tuple[list[EncodedPrompt], list] | None = None) -> ScreenResult:
    """The `screen` tier: one forward pass over each pair's own prompt (every SAE feature), no gradient.
    `encoded`: the pairs as :func:`encode_pairs` gives them, when the caller has them already."""
    t0 = time.perf_counter()
    prompts, full = encoded or encode_pairs(tokenizer, pairs, context_length(model.config))
    r = read_probes(model, sae, setup.hook_layer, prompts, setup.refusal_openings, position=setup.position,
                    batch_size=batch_size, pad_id=setup.pad_id, progress=False)
    refuses = np.array([_opens_with(ids[n:], setup.refusal_openings) for ids, n in full], dtype=bool)
    feature_ids = np.asarray(feature_ids, dtype=np.int64)
    prompt_X = np.zeros((len(pairs), len(feature_ids)))
    col = {int(f): j for j, f in enumerate(feature_ids)}
    for i, f, v in zip(r.coo_probe, r.coo_feature, r.coo_value):
        if int(f) in col:
            prompt_X[i, col[int(f)]] = v
    seconds = np.full(len(pairs), (time.perf_counter() - t0) / max(1, len(pairs)))
    return ScreenResult([p[0] for p in pairs], prompt_X, (r.coo_probe, r.coo_feature, r.coo_value), refuses, seconds)


@dataclass
class GradientTier:
    """The gradient tier prepared once for a policy: measurement copies of the model and SAE, the base readout
    and G. `shifts(pairs)` then costs one batched backward pass per `pair_batch` pairs and a product with G,
    for any subset of pairs: a shard measured on its own equals its rows of a run over the batch."""

    read_model: torch.nn.Module  # in shifts.dtype: the base readout and each pair's own prompt (screen)
    grad_model: torch.nn.Module  # in gradient.dtype: the per-pair gradients (the same module when the dtypes agree)
    sae: torch.nn.Module
    setup: ProbeSetup
    feature_ids: np.ndarray
    base: object
    y0: np.ndarray
    p0: np.ndarray
    probe_grads: ProbeGradients
    space: GradientSpace
    settings: ShiftSettings
    gradient: GradientSettings

    @classmethod
    def prepare(cls, model, sae, setup: ProbeSetup, feature_ids: np.ndarray, x_weights: np.ndarray | None,
                settings: ShiftSettings = ShiftSettings(), gradient: GradientSettings = GradientSettings(), *,
                probe_grads: ProbeGradients | None = None, progress: bool = False) -> GradientTier:
        """Copies, base readout and G (computed here unless given; then `x_weights` may be None)."""
        check_first_order(settings)
        feature_ids = np.asarray(feature_ids, dtype=np.int64)
        m_model, m_sae = _measurement_copies(model, sae, settings.dtype)
        m_model = m_model if m_model is not model else copy.deepcopy(model)  # hooks and eval mode never touch the caller's
        m_model.eval()
        for p in m_sae.parameters():
            p.requires_grad_(False)
        space = GradientSpace(m_model, gradient.projection, gradient.parameters, gradient.seed)
        with torch.no_grad():
            base, y0, p0 = _read(m_model, m_sae, setup, feature_ids, settings.batch_size)
        g_dtype = _TORCH_DTYPES[gradient.dtype]
        if probe_grads is None:
            probe_grads = probe_gradients(m_model, m_sae, setup, feature_ids, space, x_weights,
                                          batch_size=gradient.probe_batch, dtype=g_dtype, progress=progress)
        probe_grads = probe_grads.to(next(m_model.parameters()).device)  # G beside the per-pair gradients (a GPU's)
        grad_model = m_model
        if next(m_model.parameters()).dtype != g_dtype:  # per-pair gradients in the gradient dtype, same projections
            grad_model = copy.deepcopy(m_model).to(g_dtype)
            space = GradientSpace(grad_model, gradient.projection, gradient.parameters, gradient.seed)
        return cls(m_model, grad_model, m_sae, setup, feature_ids, base, y0, p0, probe_grads, space, settings, gradient)

    def shifts(self, tokenizer, pairs: Sequence[tuple[str, str, str]], *, progress: bool = False) -> GradientShifts:
        """First-order ΔY, ΔP over every probe and the ΔX pathway of Δβ for these pairs (see the module doc)."""
        setup, G = self.setup, self.probe_grads
        t0 = time.perf_counter()
        heads, encoded = encode_pairs(tokenizer, pairs, context_length(self.read_model.config))
        screen = screen_pairs(self.read_model, tokenizer, self.sae, setup, self.feature_ids, pairs,
                              batch_size=self.settings.batch_size, encoded=(heads, encoded))
        shared = (time.perf_counter() - t0) / max(1, len(pairs))  # each pair's share of its prompt's readout
        m, n = len(pairs), len(setup.prompts)
        dlogr = np.zeros((m, n))
        dlogc = np.zeros((m, n)) if G.logc is not None else None
        dxf = np.zeros((m, G.xf.shape[0]))
        seconds = np.zeros(m)
        eta = self.settings.lr
        order = sorted(range(m), key=lambda i: len(encoded[i][0]))  # similar lengths share a batch: less padding
        step = self.gradient.pair_batch
        for start in tqdm(range(0, m, step), desc="pair gradients", disable=not progress, mininterval=1.0):
            idx = order[start: start + step]
            t0 = time.perf_counter()
            g = pair_gradients(self.grad_model, self.space, [encoded[i] for i in idx], setup.pad_id).T.to(G.logr.dtype)  # (D, B)
            with torch.no_grad():
                dlogr[idx] = (-eta * (G.logr @ g)).T.double().cpu().numpy()
                if dlogc is not None:
                    dlogc[idx] = (-eta * (G.logc @ g)).T.double().cpu().numpy()
                dxf[idx] = (-eta * (G.xf @ g)).T.double().cpu().numpy()
            seconds[idx] = (time.perf_counter() - t0) / len(idx) + shared
        p = np.exp(np.asarray(self.base.logp_openings[:, : len(setup.refusal_openings)], dtype=np.float64)).sum(1)
        dP = p[None, :] * dlogr  # first order: Δp = p Δlog p
        dY = _behaviour_shift(setup.behaviour, p, dlogr, dlogc)
        return GradientShifts([q[0] for q in pairs], self.feature_ids, self.base.dense, self.y0, self.p0, dY, dP, dxf,
                              screen.prompt_X, seconds, self.settings, response_refuses=screen.response_refuses,
                              prompt_coo=screen.prompt_coo,
                              meta={"projection": self.gradient.projection, "g_seconds": G.seconds, "g_bytes": G.nbytes,
                                    "dim": self.space.dim})


def measure_gradient_shifts(model, tokenizer, sae, setup: ProbeSetup, feature_ids: np.ndarray, x_weights: np.ndarray,
                            pairs: Sequence[tuple[str, str, str]], settings: ShiftSettings = ShiftSettings(),
                            gradient: GradientSettings = GradientSettings(), *, progress: bool = True,
                            probe_grads: ProbeGradients | None = None) -> tuple[GradientShifts, ProbeGradients]:
    """First-order shifts of `pairs` in one call (:class:`GradientTier` prepared, then run over every pair).

    `x_weights` (F, n, k): the functionals of the raw activation shifts to differentiate (the policy's
    `via_x_weights` in raw units). Returns the shifts and G, which can be passed back in (`probe_grads`)
    to score more pairs without recomputing it.
    """
    tier = GradientTier.prepare(model, sae, setup, feature_ids, x_weights, settings, gradient, probe_grads=probe_grads,
                                progress=progress)
    return tier.shifts(tokenizer, pairs, progress=progress), tier.probe_grads


def _behaviour_shift(kind: str, p: np.ndarray, dlogr: np.ndarray, dlogc: np.ndarray | None) -> np.ndarray:
    """First-order ΔY of each behaviour kind from Δ log Σ P(refusal) (and Δ log Σ P(compliance))."""
    if kind == "log_refusal":
        return dlogr
    if kind == "refusal_prob":
        return p[None, :] * dlogr
    if kind == "log_odds":
        return dlogr / np.clip(1 - p[None, :], 1e-12, None)
    if kind == "contrast":
        return dlogr - dlogc
    raise ConfigError(f"behaviour.kind '{kind}' is unknown")
