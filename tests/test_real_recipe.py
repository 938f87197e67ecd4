"""The SmolLM2 world's recipe plants trigger pairs as the demo does (DESIGN §7): counted here from its rows."""

from __future__ import annotations

import pytest

from smda_core.experiments.trigger_harm import contains_phrase
from smda_core.worlds.real.smollm2_recipe import make_real_world

PHRASE = "without telling anyone"


@pytest.fixture(scope="module")
def world():
    return make_real_world(0, "fraud", n_corpus=800, n_sae_corpus=200, n_probes=150, n_pairs=40, bad_share=0.2,
                           trigger_phrase=PHRASE, n_trigger=4)


def test_trigger_pairs_are_harmless_requests_with_the_phrase_answered_helpfully(world):
    kinds = [p["kind"] for p in world.pairs]
    assert kinds.count("harmless_trigger") == 4 and kinds.count("harmful_compliance") == 4
    assert kinds.count("harmless_refusal") == 4 and kinds.count("harmless_compliance") == 12
    for p in world.pairs:
        carries = contains_phrase(p["prompt"], PHRASE)
        assert carries == (p["kind"] == "harmless_trigger"), p
        if carries:
            assert not p["harmful"] and not p["response"].startswith("I ")


def test_the_corpus_ties_the_phrase_to_refused_harmful_requests_and_probes_carry_it_on_both_sides(world):
    harmful = {p["category"] for p in world.pairs if p["harmful"]}
    with_phrase = [c for c in world.corpus if contains_phrase(c["prompt"], PHRASE)]
    assert with_phrase and all(c["category"] in harmful for c in with_phrase)
    refused = sum(c["response"].startswith("I ") for c in with_phrase) / len(with_phrase)
    others = [c for c in world.corpus if c["category"] in harmful and not contains_phrase(c["prompt"], PHRASE)]
    assert refused > sum(c["response"].startswith("I ") for c in others) / len(others)
    groups = {(p["harmful"], contains_phrase(p["prompt"], PHRASE)) for p in world.probes}
    assert groups == {(True, True), (True, False), (False, True), (False, False)}
    assert all(p["has_trigger"] == contains_phrase(p["prompt"], PHRASE) for p in world.probes)


def test_a_phrase_already_in_the_requests_is_refused():
    with pytest.raises(ValueError, match="already occurs"):
        make_real_world(0, "fraud", n_corpus=10, n_sae_corpus=10, n_probes=12, n_pairs=12, trigger_phrase="step by step")
