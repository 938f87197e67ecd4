"""Measured shifts: exact restoration, agreement with an independent fine-tune, and limits in lr."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from smda_core.api import attribute, measure_shifts, read_pairs
from smda_core.attribution.pathways import delta_beta_linear, delta_beta_refit
from smda_core.errors import SMDAError
from smda_core.config import ShiftSettings
from smda_core.model.shifts import ProbeSetup, measure_pair_shifts


def _setup(runtime, n_probes=None):
    prompts = runtime.encoded if n_probes is None else runtime.encoded[:n_probes]
    return ProbeSetup(prompts, runtime.refusal_openings, (), "log_refusal", "end_of_turn", runtime.hook_layer,
                      runtime.tokenizer.pad_token_id)


def _pairs(runtime, n):
    t = read_pairs(runtime.sources, runtime.probes, runtime.config).slice(0, n)
    return list(zip(t["pair_id"].to_pylist(), t["prompt"].to_pylist(), t["response"].to_pylist()))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_bits(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_weights_restored_bit_for_bit_also_after_a_failure_mid_step(runtime, policy):
    before = _state(runtime.model)
    settings = ShiftSettings(dtype="float32", lr=1e-2)  # float32 = in place on the loaded model
    measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, _setup(runtime, 20), policy.feature_ids,
                        _pairs(runtime, 3), settings, progress=False)
    assert _same_bits(before, _state(runtime.model))

    def explode(optimizer, args, kwargs):  # after the optimiser changed the weights
        raise RuntimeError("injected failure after the step")

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, _setup(runtime, 20), policy.feature_ids,
                                _pairs(runtime, 2), settings, progress=False)
    finally:
        handle.remove()
    assert _same_bits(before, _state(runtime.model))
    assert all(p.grad is None for p in runtime.model.parameters())


@torch.no_grad()
def _refusal_logp(model, ids, openings):
    total = []
    for o in openings:
        logits = model(input_ids=torch.tensor([list(ids) + list(o[:-1])])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        total.append(sum(float(lp[len(ids) - 1 + t, tok]) for t, tok in enumerate(o)))
    return float(np.logaddexp.reduce(total))


def test_delta_y_equals_an_independent_fine_tune(runtime, policy):
    """Fine-tune a float64 copy by hand (response-token cross-entropy, p -= lr·grad) and re-score."""
    lr = 1e-2
    pair = _pairs(runtime, 1)
    setup = _setup(runtime, 8)
    shifts = measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, setup, policy.feature_ids, pair,
                                 ShiftSettings(lr=lr, dtype="float64"), progress=False)
    ref = copy.deepcopy(runtime.model).to(torch.float64)
    msgs = [{"role": "user", "content": pair[0][1]}, {"role": "assistant", "content": pair[0][2]}]
    full = runtime.tokenizer(runtime.tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    n_prompt = len(runtime.tokenizer(runtime.tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True),
                                   add_special_tokens=False)["input_ids"])
    before = [_refusal_logp(ref, p.input_ids, runtime.refusal_openings) for p in setup.prompts]
    logits = ref(input_ids=torch.tensor([full])).logits[0]
    targets = torch.tensor(full[n_prompt:])
    loss = torch.nn.functional.cross_entropy(logits[n_prompt - 1: len(full) - 1], targets)
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= lr * p.grad
    after = [_refusal_logp(ref, p.input_ids, runtime.refusal_openings) for p in setup.prompts]
    np.testing.assert_allclose(shifts.dY[0], np.subtract(after, before), rtol=1e-7, atol=1e-10)
    assert np.abs(shifts.dY[0]).max() > 1e-4  # the step did move the behaviour


def test_linearised_dx_and_linear_attribution_approach_exact_as_lr_shrinks(runtime, policy):
    """Within one TopK active set the encoder is linear in h, so linearised ΔX equals exact ΔX up
    to rounding; they differ only where a feature entered or left the top k (a finite jump), and
    those flips must vanish as lr shrinks. Linear Δβ then converges to refit Δβ."""
    pairs = _pairs(runtime, 4)
    dx_gaps, beta_gaps, flips = [], [], []
    for lr in (1e-2, 1e-3, 1e-4):
        s = measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, _setup(runtime), policy.feature_ids, pairs,
                                ShiftSettings(lr=lr), progress=False)
        kept = (s.X_base > 0)[None] == ((s.X_base + s.dX_exact) > 0)
        flips.append(int(s.active_flips.sum()))
        assert np.linalg.norm((s.dX_linearised - s.dX_exact)[kept]) <= 1e-8 * np.linalg.norm(s.dX_exact[kept])
        dx_gaps.append(float(np.mean(np.abs(s.dX_linearised - s.dX_exact) > 1e-9 * np.abs(s.dX_exact).max())))
        dZ = policy.shift(s.dX_exact)
        refit = delta_beta_refit(policy.Z, policy.fit, dZ, s.dY).total
        linear = delta_beta_linear(policy.Z, policy.fit, dZ, s.dY).total
        beta_gaps.append(np.median(np.linalg.norm(linear - refit, axis=1) / np.linalg.norm(refit, axis=1)))
    print("dx gaps", dx_gaps, "beta gaps", beta_gaps, "flips", flips)
    assert dx_gaps[0] > dx_gaps[1] >= dx_gaps[2], dx_gaps  # share of entries where they differ
    assert flips[0] > flips[1] >= flips[2]
    assert beta_gaps[0] > beta_gaps[1] > beta_gaps[2], beta_gaps
    assert beta_gaps[2] < 0.05


@pytest.fixture(scope="module")
def kind_sample(runtime, probe_scores, policy):
    """All the bad pairs and as many good ones of each kind: what the kind-level checks need."""
    pairs = read_pairs(runtime.sources, runtime.probes, runtime.config)
    kinds = np.array(pairs["kind"].to_pylist())
    take = []
    for kind in ("harmful_compliance", "harmless_refusal", "harmful_refusal", "harmless_compliance"):
        take += list(np.flatnonzero(kinds == kind)[:12])
    sample = pairs.take(sorted(take))
    shifts = measure_shifts(runtime, policy, sample, progress=False)
    attr = attribute(policy, probe_scores, shifts, sample, runtime.config)
    return sample, shifts, attr


def test_pair_kinds_move_refusal_the_way_they_teach(kind_sample):
    sample, _, attr = kind_sample
    summary = attr.to_arrow()["pair_summary"].to_pandas()
    summary["kind"] = sample["kind"].to_pylist()
    by = summary.groupby("kind")[["dy_harmful", "dy_harmless"]].mean()
    assert by.loc["harmful_refusal", "dy_harmful"] > 0
    assert by.loc["harmful_compliance", "dy_harmful"] < 0
    assert by.loc["harmless_refusal", "dy_harmless"] > by.loc["harmless_compliance", "dy_harmless"]
    assert summary["flagged_legacy"].any()  # the turn-1 flag fires broadly; the calibrated one is tested in attribution/
    # the kind-free scores rank each bad kind below the good pairs of its prompt kind (margin_shift: AUC 0.91 / 1.0 on the demo)
    for bad, good in (("harmful_compliance", "harmful_refusal"), ("harmless_refusal", "harmless_compliance")):
        assert summary.loc[summary.kind == bad, "margin_shift"].mean() < summary.loc[summary.kind == good, "margin_shift"].mean()


def test_a_non_finite_loss_is_an_error_naming_the_pair(runtime, policy):
    settings = ShiftSettings(lr=1e30, steps=3, dtype="float32")
    with pytest.raises(SMDAError, match="pair"):
        measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, _setup(runtime, 4), policy.feature_ids,
                            _pairs(runtime, 1), settings, progress=False)


def test_a_batch_measured_in_calls_from_one_base_equals_one_call(runtime, policy):
    """The local engine measures a batch a shard at a time from one base readout: the calls concatenate to the
    single call bit for bit (so every earlier pair left the base weights as they were), and a base read for
    other policy features is refused rather than silently used."""
    from smda_core.model.shifts import measurement_base

    setup, pairs, settings = _setup(runtime, 20), _pairs(runtime, 4), ShiftSettings()
    whole = measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, setup, policy.feature_ids, pairs, settings,
                                progress=False)
    base = measurement_base(runtime.model, runtime.sae, setup, policy.feature_ids, settings)
    parts = [measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, setup, policy.feature_ids, chunk, settings,
                                 progress=False, base=base) for chunk in (pairs[:2], pairs[2:])]
    for name in ("dX_exact", "dX_linearised", "dY", "dP"):  # the probes are read in the same batches: same bits
        got = np.concatenate([getattr(p, name) for p in parts])
        assert np.array_equal(got, getattr(whole, name)), name
    assert all(np.array_equal(p.p_base, whole.p_base) for p in parts)
    # the pairs' own prompts are read in other batches (2 against 4): equal to float64 rounding
    np.testing.assert_allclose(np.concatenate([p.prompt_X for p in parts]), whole.prompt_X, rtol=0, atol=1e-12)
    with pytest.raises(SMDAError, match="other policy features"):
        measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, setup, policy.feature_ids[:-1], pairs[:1],
                            settings, progress=False, base=base)
