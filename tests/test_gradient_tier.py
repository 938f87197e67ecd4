"""The gradient and screen tiers (DESIGN §4 "Three tiers") against independent computations.

Per-example gradients from one batched backward pass against autograd one example at a time; the
Kronecker projection against projecting the full gradient; the tier's first-order shifts against the
exact tier's measured ones (a small world: a few probes and pairs); the first-order attribution
against the `linear` Δβ of the same shifts.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from smda_core.attribution.pathways import delta_beta_linear, via_x_weights
from smda_core.policy.ridge import fit_ridge


@pytest.fixture(scope="module")
def small(runtime):
    """A float64 copy of the demo model, 10 probes and 4 pairs."""
    from smda_core.api import read_pairs
    from smda_core.model.chat import encode_pair
    from smda_core.model.shifts import ProbeSetup

    cfg = runtime.config
    model = copy.deepcopy(runtime.model).double().eval()
    setup = ProbeSetup([runtime.encoded[i] for i in range(0, 450, 45)], runtime.refusal_openings,
                       runtime.compliance_openings, cfg.behaviour.kind, cfg.features.position, runtime.hook_layer,
                       runtime.pad_id)
    pairs = read_pairs(runtime.sources, runtime.probes, cfg)
    rows = list(zip(pairs["pair_id"].to_pylist(), pairs["prompt"].to_pylist(), pairs["response"].to_pylist()))[::50]
    encoded = [encode_pair(runtime.tokenizer, p, r) for _, p, r in rows]
    return model, setup, rows, encoded


def _flat_grads(model, loss) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1)
                      for p, g in zip(model.parameters(), grads)])


def test_batched_per_example_gradients_equal_autograd_one_pair_at_a_time(runtime, small):
    from smda_core.model.gradients import pair_gradients
    from smda_core.model.projection import GradientSpace
    from smda_core.model.training import sft_batch, sft_loss

    model, _, _, encoded = small
    G = pair_gradients(model, GradientSpace(model, None), encoded, runtime.pad_id)  # one padded batch
    for b, enc in enumerate(encoded):
        ref = _flat_grads(model, sft_loss(model, sft_batch([enc], runtime.pad_id)))
        assert torch.allclose(G[b], ref, rtol=1e-9, atol=1e-12)  # tied embedding: both uses add up


def test_kronecker_projection_equals_projecting_the_full_gradient(runtime, small):
    from smda_core.model.gradients import pair_gradients
    from smda_core.model.projection import GradientSpace

    model, _, _, encoded = small
    full = pair_gradients(model, GradientSpace(model, None), encoded[:2], runtime.pad_id)
    space = GradientSpace(model, 8, seed=3)
    projected = pair_gradients(model, space, encoded[:2], runtime.pad_id)
    expected, offset = [], 0
    for name, p in model.named_parameters():
        g = full[:, offset: offset + p.numel()].reshape(2, *p.shape)
        offset += p.numel()
        slot = space.slots[id(p)]
        if p.dim() == 2:
            expected.append((slot.p_out.T @ g @ slot.p_in).reshape(2, -1) if slot.p_out is not None else g.reshape(2, -1))
        else:
            expected.append(g @ slot.p_out if slot.p_out is not None else g)
    assert torch.allclose(projected, torch.cat(expected, 1), rtol=1e-9, atol=1e-12)
    assert GradientSpace(model, 8, seed=3).slots[id(next(model.parameters()))].p_out.equal(
        space.slots[id(next(model.parameters()))].p_out)  # seeded: the same projection every run


def test_projection_wider_than_every_weight_is_exact(small):
    from smda_core.model.projection import GradientSpace

    model = small[0]
    assert GradientSpace(model, 10 ** 6).dim == sum(p.numel() for p in model.parameters())


def test_gradient_tier_predicts_the_exact_tier_to_first_order(runtime, small):
    """One SGD step of lr 1e-4, float64: ΔY, ΔP and fixed functionals of ΔX from G·g against the measured step."""
    from smda_core.config import GradientSettings
    from smda_core.model.gradients import measure_gradient_shifts
    from smda_core.model.shifts import measure_pair_shifts

    _, setup, rows, _ = small
    feature_ids = np.arange(0, 512, 8)
    settings = runtime.config.shifts
    exact = measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, setup, feature_ids, rows, settings,
                                progress=False)
    W = np.random.default_rng(0).normal(size=(3, len(setup.prompts), len(feature_ids)))
    grad, G = measure_gradient_shifts(runtime.model, runtime.tokenizer, runtime.sae, setup, feature_ids, W, rows,
                                      settings, GradientSettings(dtype="float64"), progress=False)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
    assert rel(grad.dY, exact.dY) < 5e-3
    assert rel(grad.dP, exact.dP) < 1e-2
    assert rel(grad.via_x, np.einsum("fpl,mpl->mf", W, exact.dX_exact)) < 5e-2  # float32 RMSNorm noise in the measured ΔX
    assert np.allclose(grad.prompt_X, exact.prompt_X) and (grad.response_refuses == exact.response_refuses).all()
    with pytest.raises(Exception, match="one plain SGD step"):
        measure_gradient_shifts(runtime.model, runtime.tokenizer, runtime.sae, setup, feature_ids, W, rows,
                                settings.replace(steps=2), GradientSettings(), progress=False, probe_grads=G)


def test_via_x_weights_are_the_linear_pathway():
    rng = np.random.default_rng(1)
    for intercept in (True, False):
        Z, y = rng.normal(size=(30, 4)), rng.normal(size=30)
        fit = fit_ridge(Z, y, 1.5, intercept)
        dZ, dY = rng.normal(size=(5, 30, 4)), rng.normal(size=(5, 30))
        assert np.allclose(np.einsum("jpl,mpl->mj", via_x_weights(Z, fit), dZ), delta_beta_linear(Z, fit, dZ, dY).via_x,
                           atol=1e-13)


def test_first_order_attribution_equals_linear_attribution_of_the_same_shifts(policy, probe_scores):
    """attribute_first_order(via_x from the functionals, ΔY) = attribute_pairs(linear) on per-probe ΔX, ΔY."""
    from smda_core.attribution.scores import attribute_first_order, attribute_pairs

    rng = np.random.default_rng(2)
    m, n, k = 4, policy.n, policy.k
    dX = rng.normal(scale=1e-4, size=(m, n, k)) * (policy.X > 0)
    dY, dP = rng.normal(scale=1e-4, size=(m, n)), rng.normal(scale=1e-5, size=(m, n))
    prompt_X = np.abs(rng.normal(size=(m, k)))
    ids = np.array([f"p{i}" for i in range(m)])
    scale = np.diag(policy.shift(np.eye(k)))
    via_x = np.einsum("jpl,mpl->mj", via_x_weights(policy.Z, policy.fit) * scale[None, None, :], dX)
    ours = attribute_first_order(policy, ids, via_x, dY, dP, pair_prompt_X=prompt_X, probe_harmful=probe_scores.harmful,
                                 probe_category=probe_scores.category)
    ref = attribute_pairs(policy, ids, dX, dY, dP, pair_prompt_X=prompt_X, probe_harmful=probe_scores.harmful,
                          probe_category=probe_scores.category, methods=("linear",), primary="linear")
    for col in ("delta_beta", "via_x", "via_y", "contribution"):
        assert np.allclose(ours.pair_attribution[col], ref.pair_attribution[col], rtol=1e-9, atol=1e-15)
    assert set(ours.pair_attribution["method"]) == {"gradient"}
    for col in ("alignment", "dy_harmful", "correctness_shift", "dominant_feature"):
        assert np.allclose(ours.pair_summary[col], ref.pair_summary[col])


def test_agreement_of_a_tier_with_itself_is_perfect_and_errors_are_relative():
    import pandas as pd

    from smda_core.attribution.agreement import method_agreement

    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"pair_id": list("abcdef"), "score": rng.normal(size=6)})
    other = ref.assign(score=ref["score"] * 1.1)
    rows = method_agreement(ref, other, method="gradient").set_index("score")
    assert rows.loc["score", "spearman"] == pytest.approx(1.0)
    assert rows.loc["score", "median_rel_err"] == pytest.approx(0.1)
    assert rows.loc["score", "n_pairs"] == 6


def test_lds_margin_is_the_change_of_the_log_odds_gap(policy, probe_scores):
    from smda_core.experiments.lds import SubsetEffect, actual_effect, lds

    h = np.asarray(probe_scores.harmful, dtype=bool)
    p0 = np.clip(probe_scores.refusal_prob, 1e-3, 1 - 1e-3)
    p1 = np.clip(p0 + np.where(h, 0.01, -0.005), 1e-3, 1 - 1e-3)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    e = actual_effect(policy, ("a",), policy.X, policy.y, h, p0, p1)
    expected = (logit(p1) - logit(p0))[h].mean() - (logit(p1) - logit(p0))[~h].mean()
    assert e.margin == pytest.approx(expected, rel=1e-9)
    effects = [SubsetEffect(("a", "b")[: i % 2 + 1], np.zeros(policy.k), 0.0, float(i % 2 + 1)) for i in range(6)]
    assert lds(effects, {"a": 1.0, "b": 1.0}, "margin")["spearman"] == pytest.approx(1.0)
