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


def test_another_pair_count_keeps_the_trigger_share_and_a_name_of_its_own():
    """`smda world smollm2 --small --pairs 40`: 40 pairs, 4 of them trigger pairs (the small world's 1 in 10),
    counted from the rows; its files do not replace the small world's; too few pairs are refused."""
    from dataclasses import asdict

    from smda_core.errors import SMDAError
    from smda_core.worlds.real.build import make_world, recipe_for

    small = recipe_for("smollm2", small=True)
    rec = recipe_for("smollm2", small=True, n_pairs=40)
    assert rec.name != small.name
    assert recipe_for("smollm2", small=True, n_pairs=small.n_pairs) == small
    w = make_world(rec)
    kinds = [p["kind"] for p in w.pairs]
    assert len(kinds) == 40 and kinds.count("harmless_trigger") == 4
    assert sum(contains_phrase(p["prompt"], rec.trigger_phrase) for p in w.pairs) == 4
    assert {k: v for k, v in asdict(rec).items() if k not in ("name", "n_pairs", "n_trigger")} == \
        {k: v for k, v in asdict(small).items() if k not in ("name", "n_pairs", "n_trigger")}
    with pytest.raises(SMDAError, match="--pairs.* 5"):
        recipe_for("smollm2", small=True, n_pairs=5)
