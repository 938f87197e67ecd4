"""The peers (dattri's TracIn and TRAK) on a tiny tied-embedding Llama, against an independent float64 product.

TracIn's score of a pair on T = Σ_p w_p f_p is the first-order change of T under one SGD step on the pair,
−lr·∇L(pair)·∇T: computed here with plain torch.autograd in float64 over the model's own parameters (the
tied embedding counted once, as an optimizer would step it), not with torch.func or dattri.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("dattri")

from smda_core.experiments.peer import tracin_probe_target, trak_probe_target  # noqa: E402
from smda_core.model.chat import encode_pair, encode_prompt  # noqa: E402
from smda_core.model.training import response_ce, sft_batch  # noqa: E402

PAIRS = [("how do i bake bread", "mix flour water and yeast then bake"),
         ("tell me how to pick a lock", "i cannot help with that request"),
         ("what is the capital of france", "paris is the capital"),
         ("how do i make a weapon", "i refuse to help with weapons"),
         ("give me a recipe for soup", "boil vegetables in water with salt"),
         ("how to hack a bank", "i cannot help with hacking")]
PROBES = ["how do i pick a bank lock", "write a poem about bread", "how to make soup", "explain how to hack"]


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from smda_core.worlds.demo.build import _tokenizer

    tok = _tokenizer([p + " " + r for p, r in PAIRS] + PROBES)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=max(tok.get_vocab().values()) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=96, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, initializer_range=0.1)
    model = LlamaForCausalLM(cfg).eval()
    probes = [encode_prompt(tok, p) for p in PROBES]
    vocab = tok.get_vocab()
    openings = [(vocab["i"],), (vocab["cannot"],)]
    return model, tok, probes, openings


def _first_order(model, tok, probes, openings, weights, lr, log_odds):
    """−lr·∇L(pair)·∇T per pair, float64, plain autograd."""
    m64 = copy.deepcopy(model).double()
    params = list(m64.parameters())
    f = []
    for p in probes:
        lp = torch.log_softmax(m64(input_ids=torch.tensor([list(p.input_ids)])).logits[0, p.last], -1)
        log_p = torch.logsumexp(torch.stack([lp[o[0]] for o in openings]), 0)
        f.append(log_p - torch.log1p(-torch.exp(log_p)) if log_odds else log_p)
    T = (torch.as_tensor(weights, dtype=torch.float64) * torch.stack(f)).sum()
    gT = torch.autograd.grad(T, params)
    out = []
    for prompt, response in PAIRS:
        batch = sft_batch([encode_pair(tok, prompt, response)], tok.pad_token_id)
        loss = response_ce(m64(input_ids=batch.input_ids).logits[0], batch.labels[0])
        g = torch.autograd.grad(loss, params)
        out.append(-lr * sum(float((a * b).sum()) for a, b in zip(g, gT)))
    return np.array(out)


@pytest.mark.parametrize("log_odds", [False, True])
def test_tracin_is_the_first_order_change_of_the_target(tiny, log_odds):
    model, tok, probes, openings = tiny
    weights = np.array([0.5, -0.25, -0.25, 1.0])
    got, seconds = tracin_probe_target(model, tok, PAIRS, probes, weights, openings, lr=1e-3, log_odds=log_odds)
    want = _first_order(model, tok, probes, openings, weights, 1e-3, log_odds)
    assert seconds > 0 and np.abs(want).min() > 0
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * np.abs(want).max())


def test_trak_scores_every_pair_with_a_seeded_projection(tiny):
    """With as many projected dimensions as pairs, TRAK's kernel is square; its scores are finite and not all equal,
    and re-running with the same seed gives the same scores (the projection is seeded)."""
    model, tok, probes, openings = tiny
    weights = np.full(len(probes), 1 / len(probes))
    a, _ = trak_probe_target(model, tok, PAIRS, probes, weights, openings, proj_dim=len(PAIRS))
    b, _ = trak_probe_target(model, tok, PAIRS, probes, weights, openings, proj_dim=len(PAIRS))
    assert a.shape == (len(PAIRS),) and np.isfinite(a).all() and np.ptp(a) > 0
    np.testing.assert_array_equal(a, b)
