"""Train a sae-lens TopK SAE on residual-stream activations (the demo's SAE, and `smda sae train`).

The trainer only sees an iterator of activation chunks (like sae-lens's DataProvider), so it
does not care where the activations come from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class SAEReport:
    """How good the SAE is: sparsity (L0), faithfulness (explained variance), dead-feature share."""

    l0: float
    explained_variance: float
    dead_share: float
    d_in: int
    d_sae: int
    k: int
    n_tokens: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _new_sae(d_in: int, d_sae: int, k: int, hook_name: str, model_name: str):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                        apply_b_dec_to_input=True, metadata=SAEMetadata(hook_name=hook_name, model_name=model_name))
    return TopKSAE(cfg)


def train_topk_sae(acts: torch.Tensor, *, d_sae: int, k: int, hook_name: str, model_name: str,
                   steps: int = 3000, batch_size: int = 1024, lr: float = 2e-3, seed: int = 0,
                   progress: bool = True):
    """Fit a TopK SAE to `acts` (n_tokens, d_in) by minimising reconstruction MSE with Adam.

    The decoder starts as the transposed encoder with unit-norm rows and b_dec at the data
    median-ish mean, the usual recipe that keeps dead features rare.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    acts = acts.float()
    n, d_in = acts.shape
    sae = _new_sae(d_in, d_sae, k, hook_name, model_name)
    with torch.no_grad():
        w = torch.randn(d_in, d_sae, generator=gen)
        w = w / w.norm(dim=0, keepdim=True)
        sae.W_enc.copy_(w * 0.5)
        sae.W_dec.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(acts.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / (0.2 * steps)))
    for step in tqdm(range(steps), desc="train SAE", disable=not progress, mininterval=1.0):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x = acts[idx]
        recon = sae.decode(sae.encode(x))
        loss = (recon - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # keep decoder rows unit-norm so activations carry the scale
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
    sae.eval()
    return sae, evaluate_sae(sae, iter([acts]))


@torch.no_grad()
def evaluate_sae(sae, chunks: Iterator[torch.Tensor]) -> SAEReport:
    """L0, explained variance (1 − SSE/SST over all tokens) and share of never-active features."""
    sse = 0.0
    total_sq = 0.0
    total_sum = None
    n = 0
    l0_sum = 0.0
    fired = None
    for x in chunks:
        x = x.to(sae.W_enc.dtype)
        f = sae.encode(x)
        recon = sae.decode(f)
        sse += float((recon - x).pow(2).sum())
        total_sq += float(x.pow(2).sum())
        s = x.sum(0)
        total_sum = s if total_sum is None else total_sum + s
        n += x.shape[0]
        active = f > 0
        l0_sum += float(active.sum())
        fired = active.any(0) if fired is None else fired | active.any(0)
    sst = total_sq - float((total_sum ** 2).sum()) / n
    return SAEReport(l0=l0_sum / n, explained_variance=1.0 - sse / sst, dead_share=float((~fired).float().mean()),
                     d_in=int(sae.cfg.d_in), d_sae=int(sae.cfg.d_sae), k=int(getattr(sae.cfg, "k", 0)), n_tokens=n)
