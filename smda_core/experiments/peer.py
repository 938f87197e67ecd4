"""Peers on the same work: dattri's TracIn and TRAK scores of each pair on the mean harmful refusal log-probability
(and on the log-odds margin).

For one SGD step of size lr, TracIn's lr·∇L(pair)·∇(−log P(refusal | probe)) is the first-order
change of the probe's refusal log-probability, so the peer predicts what SMDA measures as
`dy_harmful`. Optional: needs `pip install dattri` (the test extra has it).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from smda_core.model.chat import EncodedPrompt, context_length, encode_pair
from smda_core.model.training import response_ce, sft_batch


@dataclass(frozen=True)
class Target:
    """A peer's target T = Σ_p w_p f_p over the probes, with f = log P(refusal | p), or its log-odds."""

    weights: np.ndarray
    log_odds: bool = False


def harmful_target(harmful: np.ndarray) -> Target:
    """The mean refusal log-probability over the harmful probes (what `dy_harmful` measures)."""
    h = np.asarray(harmful, dtype=bool)
    return Target(np.where(h, 1.0 / h.sum(), 0.0))


def margin_target(harmful: np.ndarray) -> Target:
    """The log-odds margin: mean ℓ on harmful minus on harmless probes."""
    h = np.asarray(harmful, dtype=bool)
    return Target(np.where(h, 1.0 / h.sum(), -1.0 / (~h).sum()), log_odds=True)


def tracin(model, tokenizer, pairs: Sequence[tuple[str, str]], probes: Sequence[EncodedPrompt], targets: Sequence[Target],
           refusal_openings: Sequence[tuple[int, ...]], *, lr: float = 1e-4) -> tuple[np.ndarray, float]:
    """(m, len(targets)) TracIn scores lr·∇L(pair)·∇T, the first-order change of each target under one SGD step on
    the pair; and seconds per pair (all targets in one run: the pairs' gradients are computed once). Unprojected."""
    from dattri.algorithm.tracin import TracInAttributor

    task, train, test = _attribution_task(model, tokenizer, pairs, probes, targets, refusal_openings)
    attributor = TracInAttributor(task=task, weight_list=torch.tensor([lr]), normalized_grad=False)
    # dattri 0.3 projects both gradients to 512 random dimensions by default (projector_kwargs=None still means
    # its DEFAULT_PROJECTOR_KWARGS): the dot product of near-orthogonal gradients is then mostly projection noise,
    # the cause of TracIn's disagreement with an exact first-order product. The peer runs unprojected.
    attributor.projector_kwargs = None
    t0 = time.perf_counter()
    scores = attributor.attribute(train, test)
    seconds = (time.perf_counter() - t0) / len(pairs)
    return scores.double().cpu().numpy(), seconds


def trak(model, tokenizer, pairs: Sequence[tuple[str, str]], probes: Sequence[EncodedPrompt], targets: Sequence[Target],
         refusal_openings: Sequence[tuple[int, ...]], *, proj_dim: int | None = None, seed: int = 0
         ) -> tuple[np.ndarray, float]:
    """(m, len(targets)) TRAK scores of each pair on each target, one checkpoint; and seconds per pair.

    TRAK projects per-pair gradients to `proj_dim` random dimensions and solves against their kernel; with fewer
    pairs than dimensions that kernel is singular, so the default is half the pairs (at most 512, dattri's own)."""
    from dattri.algorithm.trak import TRAKAttributor

    task, train, test = _attribution_task(model, tokenizer, pairs, probes, targets, refusal_openings)
    net = task.get_model()

    def correct_probability(params, data):  # TRAK's Q = 1 − p: the probability the pair's response is produced
        ids, labels = data
        return torch.exp(-response_ce(torch.func.functional_call(net, params, (ids.unsqueeze(0),)).logits[0], labels))

    attributor = TRAKAttributor(task=task, correct_probability_func=correct_probability)
    # passed after construction: dattri updates its module-wide default dict in place with the kwargs it is given
    attributor.projector_kwargs = {"proj_dim": proj_dim or max(8, min(512, len(pairs) // 2)), "proj_max_batch_size": 32,
                                   "proj_seed": seed, "device": "cpu"}
    t0 = time.perf_counter()
    attributor.cache(train)
    scores = attributor.attribute(test)
    seconds = (time.perf_counter() - t0) / len(pairs)
    return scores.double().cpu().numpy(), seconds


def _attribution_task(model, tokenizer, pairs: Sequence[tuple[str, str]], probes: Sequence[EncodedPrompt],
                      targets: Sequence[Target], refusal_openings: Sequence[tuple[int, ...]]):
    """dattri's task for a peer: the SFT loss of each pair, and one test item per target whose loss is −Σ_p w_p f_p
    over the probes (so that a peer's score is the first-order change of Σ w f); with the pairs' and the tests'
    loaders."""
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    model = copy.deepcopy(model).float().eval()  # the caller's model stays as it is
    pad = tokenizer.pad_token_id
    enc = [encode_pair(tokenizer, p, r, name="peer pair", max_tokens=context_length(model.config)) for p, r in pairs]
    train = sft_batch(enc, pad)  # right padding: a causal model's response logits never see the padding
    span = max(len(o) for o in refusal_openings)
    branch = list(refusal_openings[0][:-1])
    if any(tuple(o[:-1]) != tuple(branch) for o in refusal_openings):
        raise ValueError("the peer scores openings that share their prefix (one teacher-forcing branch)")
    test_width = max(len(p.input_ids) for p in probes) + span - 1
    n_t = len(targets)
    test_ids = torch.full((n_t, len(probes), test_width), pad)  # one test item per target: all the probes
    last = torch.zeros((n_t, len(probes)), dtype=torch.long)
    for i, p in enumerate(probes):
        seq = list(p.input_ids) + branch
        test_ids[:, i, : len(seq)] = torch.tensor(seq)
        last[:, i] = len(p.input_ids) - 1
    openings = torch.tensor([list(o) for o in refusal_openings])  # (R, span)
    steps = torch.arange(span)
    weights = torch.as_tensor(np.stack([np.asarray(t.weights, dtype=np.float32) for t in targets]))  # (n_t, n)
    log_odds = torch.tensor([float(t.log_odds) for t in targets])

    def loss_func(params, data):
        ids, labels = data
        return response_ce(torch.func.functional_call(model, params, (ids.unsqueeze(0),)).logits[0], labels)

    def target_func(params, data):
        ids, at, w, odds = data  # (n, T), (n,), (n,), () — one target
        lp = torch.log_softmax(torch.func.functional_call(model, params, (ids,)).logits, -1)  # (n, T, V)
        rows = torch.gather(lp, 1, (at[:, None] + steps[None, :])[..., None].expand(-1, -1, lp.shape[-1]))  # (n, span, V)
        log_p = torch.logsumexp(torch.stack([rows[:, steps, o].sum(-1) for o in openings], dim=1), 1)  # (n,)
        f = log_p - odds * torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-6))  # log-probability, or its log-odds
        return -(w * f).sum()  # dattri's target is a loss: the score is then the first-order change of Σ w f

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict(), target_func=target_func)
    return (task, DataLoader(TensorDataset(train.input_ids, train.labels), batch_size=32),
            DataLoader(TensorDataset(test_ids, last, weights, log_odds), batch_size=1))
