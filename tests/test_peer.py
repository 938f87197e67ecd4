"""The peers (dattri's TracIn and TRAK) on a tiny tied-embedding Llama, against independent float64 gradients.

TracIn's score of a pair on T = Σ_p w_p f_p is the first-order change of T under one SGD step on the pair,
−lr·∇L(pair)·∇T; TRAK's is a kernel regression of the test gradient on the pairs' projected gradients. The
gradients are computed here with plain torch.autograd in float64, not with torch.func or dattri.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("dattri")

from smda_core.experiments.peer import Target, tracin, trak  # noqa: E402
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


def _gradients(model, tok, probes, openings, targets):
    """Plain float64 autograd: the (m, D) SFT-loss gradients of the pairs, the (T, D) gradients of each target
    T = Σ_p w_p f_p, and each pair's probability of its own response (TRAK's 1 − Q), over the model's own
    parameters (the tied embedding counted once, as an optimizer would step it)."""
    m64 = copy.deepcopy(model).double()
    params = list(m64.parameters())

    def flat(value):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params, retain_graph=True)]).numpy()

    f_lp, f_odds = [], []
    for p in probes:
        lp = torch.log_softmax(m64(input_ids=torch.tensor([list(p.input_ids)])).logits[0, p.last], -1)
        log_p = torch.logsumexp(torch.stack([lp[o[0]] for o in openings]), 0)
        f_lp.append(log_p)
        f_odds.append(log_p - torch.log1p(-torch.exp(log_p)))
    g_targets = np.stack([flat((torch.as_tensor(t.weights, dtype=torch.float64)
                                * torch.stack(f_odds if t.log_odds else f_lp)).sum()) for t in targets])
    g_pairs, produced = [], []
    for prompt, response in PAIRS:
        batch = sft_batch([encode_pair(tok, prompt, response)], tok.pad_token_id)
        loss = response_ce(m64(input_ids=batch.input_ids).logits[0], batch.labels[0])
        g_pairs.append(flat(loss))
        produced.append(float(torch.exp(-loss.detach())))
    return np.stack(g_pairs), g_targets, np.array(produced)


TARGETS = [Target(np.array([0.5, -0.25, -0.25, 1.0])), Target(np.array([0.5, -0.25, -0.25, 1.0]), log_odds=True),
           Target(np.full(len(PROBES), 1 / len(PROBES)))]


def test_tracin_is_the_first_order_change_of_each_target(tiny):
    """TracIn's score is −lr·∇L(pair)·∇T, every target from one run."""
    model, tok, probes, openings = tiny
    got, seconds = tracin(model, tok, PAIRS, probes, TARGETS, openings, lr=1e-3)
    g_pairs, g_targets, _ = _gradients(model, tok, probes, openings, TARGETS)
    want = -1e-3 * g_pairs @ g_targets.T
    assert got.shape == (len(PAIRS), len(TARGETS)) and seconds > 0 and np.abs(want).min() > 0
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * np.abs(want).max())


def test_trak_is_the_kernel_regression_of_the_projected_gradients(tiny):
    """With as many projected dimensions as pairs, TRAK's score of pair i on a test gradient g is
    Q_i·[gᵀP (G P)⁻¹]_i (Φ = G P square, so Φ(ΦᵀΦ)⁻¹ = Φ⁻ᵀ), with Q_i = 1 − p(pair i's response). The
    projection P is dattri's seeded one, applied here to independent float64 gradients; the kernel algebra and
    Q are computed here. The same seed gives the same scores."""
    from dattri.func.projection import random_project

    model, tok, probes, openings = tiny
    m = len(PAIRS)
    got, _ = trak(model, tok, PAIRS, probes, TARGETS, openings, proj_dim=m, seed=3)
    again, _ = trak(model, tok, PAIRS, probes, TARGETS, openings, proj_dim=m, seed=3)
    np.testing.assert_array_equal(got, again)
    g_pairs, g_targets, produced = _gradients(model, tok, probes, openings, TARGETS)

    def project(g):
        x = torch.as_tensor(g, dtype=torch.float32)
        return random_project(x, x.shape[0], proj_dim=m, proj_max_batch_size=32, proj_seed=3, device="cpu")(
            x, ensemble_id=0).double().numpy()

    phi = project(g_pairs)  # (m, m)
    test = project(-g_targets)  # dattri's test loss is −T
    want = np.linalg.solve(phi.T, test.T) * (1 - produced)[:, None]  # (m, T)
    assert got.shape == (m, len(TARGETS)) and np.abs(want).min() > 0
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=1e-4 * np.abs(want).max())
