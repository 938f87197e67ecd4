"""A short safety fine-tune of a real chat model on a refusal corpus, cheap enough for 2 CPU cores.

Embeddings (tied with the LM head in SmolLM2) and the lower blocks stay frozen, sequences
are short, and the loss is on the response tokens only: a few hundred examples teach the
refusal openings without retraining what the model already knows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FinetuneSpec:
    steps: int = 120
    batch_size: int = 8
    lr: float = 1e-4
    train_from_layer: int = 10  # blocks below stay frozen
    seed: int = 0


def safety_finetune(model, tokenizer, corpus: list[dict], spec: FinetuneSpec, *, progress: bool = True) -> list[float]:
    """AdamW on the response tokens of `corpus` (prompt/response dicts); returns the loss per step."""
    from smda_core.model.chat import encode_pair
    from smda_core.model.loading import decoder_layers
    from smda_core.model.training import make_optimizer, sft_batch, train_steps, warmup_cosine

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
    opt = make_optimizer(params, "adamw", lr=spec.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, max(1, spec.steps // 10), spec.steps)

    def batches():  # epochs over a shuffled corpus
        order: list[int] = []
        for _ in range(spec.steps):
            if len(order) < spec.batch_size:
                order += rng.sample(range(len(data)), len(data))
            take, order = order[: spec.batch_size], order[spec.batch_size:]
            yield sft_batch([data[i] for i in take], tokenizer.pad_token_id)

    model.train()
    losses = train_steps(model, batches(), opt, scheduler=sched, clip_norm=1.0, progress=progress,
                         desc="safety fine-tune", total=spec.steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses
