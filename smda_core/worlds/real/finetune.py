"""A short safety fine-tune of a real chat model on a refusal corpus, cheap enough for 2 CPU cores.

Embeddings (tied with the LM head in SmolLM2) and the lower blocks stay frozen, sequences
are short, and the loss is on the response tokens only: a few hundred examples teach the
refusal openings without retraining what the model already knows.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class FinetuneSpec:
    steps: int = 120
    batch_size: int = 8
    lr: float = 1e-4
    train_from_layer: int = 10  # blocks below stay frozen
    seed: int = 0


def _batch(data: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in data)
    ids = torch.full((len(data), width), pad_id, dtype=torch.long)
    labels = torch.full((len(data), width), -100, dtype=torch.long)
    mask = torch.zeros((len(data), width), dtype=torch.long)
    for r, (seq, n_prompt) in enumerate(data):
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


def safety_finetune(model, tokenizer, corpus: list[dict], spec: FinetuneSpec, *, progress: bool = True) -> list[float]:
    """AdamW on the response tokens of `corpus` (prompt/response dicts); returns the loss per step."""
    from smda_core.model.chat import encode_pair
    from smda_core.model.loading import decoder_layers

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    data = [encode_pair(tokenizer, c["prompt"], c["response"], name=f"corpus row {i}") for i, c in enumerate(corpus)]
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(decoder_layers(model))[spec.train_from_layer:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    norm = getattr(getattr(model, "model", model), "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    warm = max(1, spec.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * s / spec.steps))))
    order: list[int] = []
    losses = []
    model.train()
    for _ in tqdm(range(spec.steps), desc="safety fine-tune", disable=not progress, mininterval=2.0):
        if len(order) < spec.batch_size:
            order += rng.sample(range(len(data)), len(data))  # epochs over a shuffled corpus
        take, order = order[: spec.batch_size], order[spec.batch_size:]
        ids, mask, labels = _batch([data[i] for i in take], tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses
