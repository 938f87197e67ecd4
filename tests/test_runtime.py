"""Features and behaviour: batching/padding invariance, teacher forcing against a token loop, loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smda_core.model.chat import encode_openings, encode_prompt
from smda_core.errors import InputError, ModelMismatchError
from smda_core.model.loading import check_compatible
from smda_core.model.readout import read_probes
from smda_core.policy.behaviour import behaviour_from_logp

POSITIONS = ["end_of_turn", "last", "mean", "max"]


def _dense(readout, n, d_sae):
    X = np.zeros((n, d_sae))
    X[readout.coo_probe, readout.coo_feature] = readout.coo_value
    return X


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_features_and_behaviour_same_alone_and_in_padded_batch(runtime, position, padding_side):
    prompts = runtime.encoded[:12]
    lengths = {len(p.input_ids) for p in prompts}
    assert len(lengths) > 1, "the batch must actually need padding"
    kw = dict(position=position, pad_id=runtime.tokenizer.pad_token_id, padding_side=padding_side, progress=False)
    batched = read_probes(runtime.model, runtime.sae, runtime.hook_layer, prompts, runtime.refusal_openings, batch_size=12, **kw)
    d_sae = runtime.sae.cfg.d_sae
    Xb = _dense(batched, len(prompts), d_sae)
    for i, p in enumerate(prompts):
        alone = read_probes(runtime.model, runtime.sae, runtime.hook_layer, [p], runtime.refusal_openings, batch_size=1, **kw)
        np.testing.assert_allclose(_dense(alone, 1, d_sae)[0], Xb[i], atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(alone.logp_openings[0], batched.logp_openings[i], atol=2e-4)


@torch.no_grad()
def test_refusal_logprob_equals_token_by_token_loop(runtime):
    """Score each opening by feeding the prompt, then the opening one token at a time (no batching, no branches)."""
    prompts = runtime.encoded[:6]
    r = read_probes(runtime.model, runtime.sae, runtime.hook_layer, prompts, runtime.refusal_openings, progress=False,
                    pad_id=runtime.tokenizer.pad_token_id)
    for i, p in enumerate(prompts):
        for j, opening in enumerate(runtime.refusal_openings):
            ids = list(p.input_ids)
            total = 0.0
            for tok in opening:
                logits = runtime.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
                total += float(torch.log_softmax(logits, -1)[tok])
                ids.append(tok)
            assert r.logp_openings[i, j] == pytest.approx(total, abs=1e-4)
    y, prob = behaviour_from_logp(r.logp_openings, "log_refusal")
    np.testing.assert_allclose(prob, np.exp(r.logp_openings).sum(1), rtol=1e-10)
    np.testing.assert_allclose(y, np.log(np.exp(r.logp_openings).sum(1)), rtol=1e-10)


def test_behaviour_options_are_transforms_of_the_refusal_probability():
    lp = np.log(np.array([[0.2, 0.1], [0.01, 0.02]]))
    comp = np.log(np.array([[0.3, 0.1], [0.5, 0.4]]))
    p = np.array([0.3, 0.03])
    assert np.allclose(behaviour_from_logp(lp, "refusal_prob")[0], p)
    assert np.allclose(behaviour_from_logp(lp, "log_odds")[0], np.log(p / (1 - p)))
    assert np.allclose(behaviour_from_logp(lp, "contrast", comp)[0], np.log(p) - np.log([0.4, 0.9]))


def test_positions_point_at_the_right_tokens(runtime):
    tok = runtime.tokenizer
    p = encode_prompt(tok, "how do i bake pancakes today")
    toks = tok.convert_ids_to_tokens(list(p.input_ids))
    assert [toks[i] for i in p.user_positions] == ["how", "do", "i", "bake", "pancakes", "today"]
    assert toks[p.end_of_turn] == "<|end|>"
    assert toks[p.last] == "<|assistant|>"


def test_directory_loaders_give_the_same_features_as_in_memory_objects(runtime):
    """Auto classes + SAE.load_from_disk against objects built by hand from the saved weights."""
    from safetensors.torch import load_file
    from sae_lens import TopKSAE, TopKSAEConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    from smda_core.sources import resolve_sources

    src = resolve_sources(runtime.config, progress=False)
    model_dir, sae_dir = src.model, src.sae["path"]
    cfg = LlamaConfig.from_dict(json.load(open(f"{model_dir}/config.json")))
    model = LlamaForCausalLM(cfg)
    state = load_file(f"{model_dir}/model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embedding
    model.tie_weights()
    model.eval()
    scfg = json.load(open(f"{sae_dir}/cfg.json"))
    sae = TopKSAE(TopKSAEConfig(d_in=scfg["d_in"], d_sae=scfg["d_sae"], k=scfg["k"]))
    sae.load_state_dict(load_file(f"{sae_dir}/sae_weights.safetensors"))
    kw = dict(position="end_of_turn", pad_id=runtime.tokenizer.pad_token_id, progress=False)
    a = read_probes(runtime.model, runtime.sae, runtime.hook_layer, runtime.encoded[:20], runtime.refusal_openings, **kw)
    b = read_probes(model, sae, runtime.hook_layer, runtime.encoded[:20], runtime.refusal_openings, **kw)
    d = runtime.sae.cfg.d_sae
    np.testing.assert_allclose(_dense(a, 20, d), _dense(b, 20, d), atol=1e-5)
    np.testing.assert_allclose(a.logp_openings, b.logp_openings, atol=1e-5)


def test_mismatched_sae_and_layer_out_of_range_are_named(runtime):
    from sae_lens import TopKSAE, TopKSAEConfig

    wrong = TopKSAE(TopKSAEConfig(d_in=64, d_sae=128, k=4))
    with pytest.raises(ModelMismatchError, match="d_in=64"):
        check_compatible(runtime.model, wrong, runtime.hook_layer)
    with pytest.raises(ModelMismatchError, match="hook_layer=9 is out of range"):
        check_compatible(runtime.model, runtime.sae, 9)


def test_empty_and_huge_prompts_and_bad_openings_are_named(runtime):
    with pytest.raises(InputError, match="probe-x.*empty prompt"):
        encode_prompt(runtime.tokenizer, "   ", name="probe-x")
    with pytest.raises(InputError, match="max_prompt_tokens=8"):
        encode_prompt(runtime.tokenizer, "how do i bake pancakes today at home for my friend", name="p", max_tokens=8)
    with pytest.raises(InputError, match="same .*token length"):
        encode_openings(runtime.tokenizer, ("i cannot", "sorry"))
