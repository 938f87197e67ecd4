"""How one SFT pair moves the model: a few optimiser steps on that pair alone, re-measure, restore.

For each pair i: θ_i = θ after `steps` optimiser steps on the SFT loss of the pair
(response tokens only); ΔX_i = X(θ_i) − X(θ) on the policy features of every probe (exact:
re-encode; linearised: the SAE's gate at θ times Δh·W_enc), ΔY_i = y(θ_i) − y(θ); then the
weights are restored bit for bit, also when a step fails (DESIGN §4).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from smda_core.model.chat import EncodedPrompt, context_length, encode_pair
from smda_core.errors import SMDAError
from smda_core.config import ShiftSettings
from smda_core.model.measurements import PairShifts
from smda_core.model.readout import Readout, read_probes
from smda_core.policy.behaviour import behaviour_from_logp
from smda_core.model.training import make_optimizer, sft_batch, train_steps

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}



@dataclass(frozen=True)
class ProbeSetup:
    """What a shift measurement needs to know about the probes and the behaviour."""

    prompts: Sequence[EncodedPrompt]
    refusal_openings: Sequence[tuple[int, ...]]
    compliance_openings: Sequence[tuple[int, ...]]
    behaviour: str
    position: str
    hook_layer: int
    pad_id: int



def _measurement_copies(model, sae, dtype: str):
    """Work on the model itself when its dtype is the measurement dtype, else on a converted copy."""
    tdtype = _TORCH_DTYPES[dtype]
    if next(model.parameters()).dtype == tdtype:
        m = model
    else:
        m = copy.deepcopy(model).to(tdtype)
    s = copy.deepcopy(sae).to(dtype=tdtype)
    return m, s


def _read(model, sae, setup: ProbeSetup, feature_ids: np.ndarray, batch_size: int) -> tuple[Readout, np.ndarray, np.ndarray]:
    openings = list(setup.refusal_openings) + list(setup.compliance_openings)
    r = read_probes(model, sae, setup.hook_layer, setup.prompts, openings, position=setup.position, batch_size=batch_size,
                    pad_id=setup.pad_id, feature_ids=feature_ids, keep_hidden=True, progress=False)
    n_ref = len(setup.refusal_openings)
    y, p = behaviour_from_logp(r.logp_openings[:, :n_ref], setup.behaviour,
                               r.logp_openings[:, n_ref:] if setup.compliance_openings else None)
    return r, y, p


def linearised_dx(sae, feature_ids: np.ndarray, hidden_base: list[torch.Tensor], hidden_new: list[torch.Tensor], position: str) -> np.ndarray:
    """The paper's ΔX ≈ 1[active at θ] ⊙ (Δh W_enc), pooled like the features (mean / max token).

    The gate is the SAE's own: a feature counts as open where its activation at θ is > 0
    (ReLU, TopK and JumpReLU alike), so the linearisation never flips a feature.
    """
    device = sae.W_enc.device  # the readout keeps hidden states on the CPU; the SAE may be on a GPU
    cols = torch.as_tensor(np.array(feature_ids), device=device)
    W = sae.W_enc[:, cols]
    if position in ("end_of_turn", "last"):  # one token per probe: all probes in one product
        h0 = torch.cat(hidden_base).to(device, W.dtype)
        h1 = torch.cat(hidden_new).to(device, W.dtype)
        return (((h1 - h0) @ W) * (sae.encode(h0)[:, cols] > 0)).double().cpu().numpy()
    rows = []
    for h0, h1 in zip(hidden_base, hidden_new):
        h0 = h0.to(device, W.dtype)
        h1 = h1.to(device, W.dtype)
        acts0 = sae.encode(h0)[:, cols]
        d = ((h1 - h0) @ W) * (acts0 > 0)
        if position == "max":
            arg = acts0.argmax(0)
            d = d[arg, torch.arange(len(cols), device=device)]
        else:
            d = d.mean(0)
        rows.append(d.double().cpu().numpy())
    return np.stack(rows)


def apply_pair_update(model, ids: list[int], n_prompt: int, settings: ShiftSettings) -> float:
    """`settings.steps` optimiser steps on one pair's SFT loss; returns the last loss.

    The loss is computed in the model's own dtype (see `smda_core.model.training`), so a
    float64 measurement keeps float64 precision.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                         what="shifts.optimizer")
    batch = sft_batch([(ids, n_prompt)], pad_id=0)  # one sequence: no padding
    losses = train_steps(model, [batch] * settings.steps, opt, check_finite=True)
    return losses[-1] if losses else float("nan")


class restored_weights:
    """Context manager: whatever happens inside, parameters and buffers come back bit for bit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = {k: v.detach().clone() for k, v in self.model.state_dict(keep_vars=True).items()}
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for k, v in self.model.state_dict(keep_vars=True).items():
                v.copy_(self.saved[k])
        for p in self.model.parameters():
            p.grad = None
        return False


@dataclass(frozen=True)
class MeasurementBase:
    """What every pair's shift is measured from: the model and SAE in the measurement dtype and their readout of
    the probes. One per batch of pairs, however many calls the pairs are measured in."""

    model: Any
    sae: Any
    feature_ids: np.ndarray
    settings: ShiftSettings
    readout: Readout
    y0: np.ndarray
    p0: np.ndarray

    def matches(self, feature_ids: np.ndarray, settings: ShiftSettings) -> bool:
        """Read for these policy features and shift settings."""
        return np.array_equal(self.feature_ids, feature_ids) and self.settings == settings


def measurement_base(model, sae, setup: ProbeSetup, feature_ids: np.ndarray,
                     settings: ShiftSettings = ShiftSettings()) -> MeasurementBase:
    """The measurement copies (eval mode: no dropout, so the update is deterministic) and the base readout."""
    feature_ids = np.asarray(feature_ids, dtype=np.int64)
    m_model, m_sae = _measurement_copies(model, sae, settings.dtype)
    was_training = m_model.training
    m_model.eval()
    try:
        readout, y0, p0 = _read(m_model, m_sae, setup, feature_ids, settings.batch_size)
    finally:
        m_model.train(was_training)
    return MeasurementBase(m_model, m_sae, feature_ids, settings, readout, y0, p0)


def measure_pair_shifts(model, tokenizer, sae, setup: ProbeSetup, feature_ids: np.ndarray,
                        pairs: Sequence[tuple[str, str, str]], settings: ShiftSettings = ShiftSettings(), *,
                        progress: bool = True, base: MeasurementBase | None = None) -> PairShifts:
    """Measure ΔX (exact and linearised), ΔY and ΔP of every pair (pair_id, prompt, response), from `base` when
    the caller measures one batch in several calls (else read here)."""
    feature_ids = np.asarray(feature_ids, dtype=np.int64)
    if base is None:
        base = measurement_base(model, sae, setup, feature_ids, settings)
    elif not base.matches(feature_ids, settings):
        raise SMDAError("the measurement base was read for other policy features or shift settings")
    m_model, m_sae, before, y0, p0 = base.model, base.sae, base.readout, base.y0, base.p0
    was_training = m_model.training
    m_model.eval()  # no dropout: the update is deterministic
    context = context_length(model.config)
    encoded = [encode_pair(tokenizer, prompt, response, name=f"pair {pid}", max_tokens=context) for pid, prompt, response in pairs]
    prompt_readout = read_probes(m_model, m_sae, setup.hook_layer, [_prompt_only(tokenizer, p, pid) for pid, p, _ in pairs],
                                 setup.refusal_openings, position=setup.position, batch_size=settings.batch_size,
                                 pad_id=setup.pad_id, progress=False)  # every SAE feature of the pair's own prompt
    refuses = np.array([_opens_with(ids[n_prompt:], setup.refusal_openings) for ids, n_prompt in encoded], dtype=bool)
    m, n, k = len(pairs), len(setup.prompts), len(feature_ids)
    dX_exact = np.zeros((m, n, k))
    dX_lin = np.zeros((m, n, k))
    dY = np.zeros((m, n))
    dP = np.zeros((m, n))
    flips = np.zeros(m, dtype=np.int64)
    seconds = np.zeros(m)
    bar = tqdm(list(enumerate(pairs)), desc="pair shifts", disable=not progress, mininterval=1.0)
    for i, (pair_id, _, _) in bar:
        t0 = time.perf_counter()
        ids, n_prompt = encoded[i]
        with restored_weights(m_model):
            try:
                apply_pair_update(m_model, ids, n_prompt, settings)
            except SMDAError as exc:
                raise SMDAError(f"pair {pair_id}: {exc}") from None
            with torch.no_grad():
                new, y1, p1 = _read(m_model, m_sae, setup, feature_ids, settings.batch_size)
        dX_exact[i] = new.dense - before.dense
        with torch.no_grad():
            dX_lin[i] = linearised_dx(m_sae, feature_ids, before.hidden_tokens, new.hidden_tokens, setup.position)
        dY[i] = y1 - y0
        dP[i] = p1 - p0
        flips[i] = int(((new.dense > 0) != (before.dense > 0)).sum())
        seconds[i] = time.perf_counter() - t0
        log.info("pair %s shifted in %.2fs", pair_id, seconds[i])
    if was_training:
        m_model.train()
    prompt_X = np.zeros((m, k))
    col = {int(f): j for j, f in enumerate(feature_ids)}
    for i, f, v in zip(prompt_readout.coo_probe, prompt_readout.coo_feature, prompt_readout.coo_value):
        if int(f) in col:
            prompt_X[i, col[int(f)]] = v
    return PairShifts([p[0] for p in pairs], feature_ids, before.dense, y0, p0, dX_exact, dX_lin, dY, dP, flips,
                      prompt_X, seconds, settings, response_refuses=refuses,
                      prompt_coo=(prompt_readout.coo_probe, prompt_readout.coo_feature, prompt_readout.coo_value))


def _opens_with(response_ids: Sequence[int], openings: Sequence[tuple[int, ...]]) -> bool:
    """Does a response begin with one of the refusal openings (token for token)? Its response type, no judge needed."""
    return any(tuple(response_ids[: len(o)]) == tuple(o) for o in openings)


def _prompt_only(tokenizer, prompt: str, pair_id: str) -> EncodedPrompt:
    from smda_core.model.chat import encode_prompt

    return encode_prompt(tokenizer, prompt, name=f"pair {pair_id}")
