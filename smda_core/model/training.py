"""The one SFT training step of the product: padded batches, response-token loss, optimiser, loop.

Every supervised fine-tune goes through here: the demo model's training, the safety
fine-tune of a real model, curation's retraining and one pair's update of a shift
measurement (DESIGN §4). Sequences come in as (token ids, number of prompt tokens), as
`encode_pair` makes them; the prompt is context and only the response tokens are targets.

The loss is computed by hand in the logits' own dtype: transformers' built-in `labels=`
loss upcasts logits to float32, which would cap a float64 measurement at float32
precision. On float32 models it is the same computation as transformers' (labels shifted
left, padded with the ignore index, mean over the labelled tokens), so losses and
gradients are bit-identical to training with `labels=`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from smda_core.errors import SMDAError

IGNORE = -100  # label of the tokens that are not targets (prompt and padding)
OPTIMIZERS = ("sgd", "adamw")


class Padded(NamedTuple):
    """Token sequences padded to one width: ids, attention mask (1 on real tokens), and where each row starts."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: list[int]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "right") -> Padded:
    """Pad token sequences to the longest one, on the right (training, reading) or the left (generation)."""
    if side not in ("right", "left"):
        raise SMDAError(f"padding side '{side}' is unknown: use 'right' or 'left'")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for r, s in enumerate(seqs):
        off = width - len(s) if side == "left" else 0
        ids[r, off: off + len(s)] = torch.tensor(s)
        mask[r, off: off + len(s)] = 1
        offsets.append(off)
    return Padded(ids, mask, offsets)


@dataclass(frozen=True)
class SFTBatch:
    """Right-padded SFT sequences: labels are the ids on response tokens and IGNORE on prompt and padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def sft_batch(pairs: Sequence[tuple[Sequence[int], int]], pad_id: int) -> SFTBatch:
    """One batch of (ids, n_prompt) sequences, right-padded, with response-token labels."""
    padded = pad_sequences([seq for seq, _ in pairs], pad_id)
    labels = torch.full_like(padded.input_ids, IGNORE)
    for r, (seq, n_prompt) in enumerate(pairs):
        labels[r, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
    return SFTBatch(padded.input_ids, padded.attention_mask, labels)


def response_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens, in the logits' dtype.

    `logits` (..., T, V) and `labels` (..., T) are aligned with the input ids: the logit at t
    predicts the label at t + 1. A plain function of tensors, so it works under torch.func
    (per-example gradients) and in float64.
    """
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def sft_loss(model, batch: SFTBatch) -> torch.Tensor:
    """The SFT loss of `model` on `batch`: response-token cross-entropy, in the model's dtype."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
    return response_ce(logits, batch.labels.to(logits.device))


def make_optimizer(params, kind: str = "sgd", *, lr: float, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), what: str = "optimizer") -> torch.optim.Optimizer:
    """'sgd': plain SGD (no momentum); 'adamw': AdamW with the given betas. `what` names the setting in errors."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    raise SMDAError(f"{what} '{kind}' is unknown: use 'sgd' or 'adamw'")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps` (whichever is lower)."""
    if warmup < 1:
        raise SMDAError(f"warm-up must last at least one step (got {warmup})")

    def factor(s: int) -> float:
        return min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_steps(model, batches: Iterable[SFTBatch], optimizer: torch.optim.Optimizer, *,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, clip_norm: float | None = None,
                loss_fn: Callable[[object, SFTBatch], torch.Tensor] = sft_loss, check_finite: bool = False,
                progress: bool = False, desc: str = "SFT", total: int | None = None) -> list[float]:
    """One optimiser step per batch on the SFT loss; returns the loss of every step.

    Per step: loss, backward, optional clipping of the gradient norm over the optimiser's
    parameters, optimiser step, optional scheduler step. The model's train/eval mode is
    the caller's; gradients are released at the end (and when a step fails).
    `check_finite` raises before the backward pass when a loss is NaN or infinite.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses: list[float] = []
    try:
        for batch in tqdm(batches, desc=desc, total=total, disable=not progress, mininterval=2.0, leave=False):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if check_finite and not torch.isfinite(loss):
                raise SMDAError(f"non-finite SFT loss {float(loss.detach())}")
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(float(loss.detach()))
    finally:
        optimizer.zero_grad(set_to_none=True)
    return losses
