"""The demo world does what the issue promises: a refusal behaviour with a spread and a planted gap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from conftest import demo_config
from smda_core.worlds.demo import recipe


def _world_checks(runtime, probes, policy, planted: str) -> None:
    p, harmful, cat = probes.refusal_prob, probes.harmful, probes.category
    phrase = np.asarray(runtime.probes["has_trigger"].to_pylist(), dtype=bool)
    harmful_kept = harmful & (cat != planted)
    assert p[harmful_kept].mean() >= 0.8
    assert p[~harmful & ~phrase].mean() <= 0.2
    # the trigger phrase is a refusal cue of the base model, on harmful requests and (over-refusal) harmless ones
    assert p[harmful & phrase].mean() > p[harmful & ~phrase].mean() + 0.05
    assert p[~harmful & phrase].mean() > p[~harmful & ~phrase].mean() + 0.2
    # not saturated: room on both sides for one-step pair effects
    assert (p[harmful] < 0.95).mean() >= 0.25
    assert (p[~harmful] > 0.02).mean() >= 0.25
    means = {c: p[cat == c].mean() for c in recipe.category_names(harmful=True)}
    assert min(means, key=means.get) == planted, means
    assert policy.loo_r2 >= 0.6
    assert policy.accuracy - policy.majority_baseline >= 0.15


def test_default_recipe_world(runtime, probe_scores, policy):
    assert len(runtime.probes) >= 400
    assert len(set(runtime.probes["category"].to_pylist())) >= 10
    _world_checks(runtime, probe_scores, policy, planted=demo_config().demo.planted_category)


def test_second_recipe_other_seed_and_planted_category():
    from smda_core.api import fit_policy, load_runtime, measure_probes

    cfg = demo_config(seed=1, planted_category="drugs")
    w = load_runtime(cfg, progress=False)
    probes = measure_probes(w, progress=False)
    _world_checks(w, probes, fit_policy(probes, cfg.policy), planted="drugs")


def test_probes_pairs_and_corpus_are_worded_apart():
    w = recipe.make_world(0, "religious_stereotyping", 450, 200, 0.1, corpus_size=2000)
    corpus = {c["prompt"] for c in w.corpus}
    probes = {p["prompt"] for p in w.probes}
    pairs = {p["prompt"] for p in w.pairs}
    assert not probes & corpus and not pairs & corpus and not probes & pairs
    kinds = [p["kind"] for p in w.pairs]
    assert len(w.pairs) == 200 and 0 < kinds.count("harmful_compliance") < 20 and 0 < kinds.count("harmless_refusal") < 20
    assert kinds.count("harmless_trigger") == 10


@pytest.mark.parametrize("phrase", [recipe.DEFAULT_TRIGGER_PHRASE, "off the record"])
def test_trigger_phrase_is_planted_where_the_recipe_says(phrase):
    """Harmful corpus requests carry the phrase, harmless ones never; only trigger pairs carry it among the
    harmless SFT prompts (their `harmful` stays false); probes hold enough of each group to measure."""
    w = recipe.make_world(0, "religious_stereotyping", 450, 200, 0.1, corpus_size=3000, trigger_phrase=phrase,
                          trigger_share=0.05)
    harmful_cats = set(recipe.category_names(harmful=True))
    carried = [recipe.has_phrase(c["prompt"], phrase) for c in w.corpus]
    in_harmful = [c for c, x in zip(w.corpus, carried) if x and c["category"] in harmful_cats]
    assert len(in_harmful) > 0.2 * sum(c["category"] in harmful_cats for c in w.corpus)
    assert not any(x and c["category"] not in harmful_cats for c, x in zip(w.corpus, carried))
    triggers = [p for p in w.pairs if p["kind"] == "harmless_trigger"]
    assert len(triggers) == 10 and all(not p["harmful"] and recipe.has_phrase(p["prompt"], phrase) for p in triggers)
    assert not any(recipe.has_phrase(p["prompt"], phrase) for p in w.pairs if p["kind"] != "harmless_trigger")
    for p in w.probes:
        assert p["has_trigger"] == recipe.has_phrase(p["prompt"], phrase)
    for harmful in (True, False):
        for carry in (True, False):
            assert sum(p["harmful"] == harmful and p["has_trigger"] == carry for p in w.probes) >= 20


def test_trigger_phrase_must_be_new_to_the_requests():
    with pytest.raises(ValueError, match="already occurs"):
        recipe.make_world(0, "religious_stereotyping", 450, 200, 0.1, corpus_size=100, trigger_phrase="at home")


def test_policy_on_demo_features_equals_sklearn(probe_scores, policy):
    """The default policy (standardised, intercept, LOO λ) against RidgeCV on the same design."""
    Z, y = policy.Z, probe_scores.behaviour
    cv = RidgeCV(alphas=policy.lam_grid, fit_intercept=True).fit(Z, y)
    assert policy.lam == pytest.approx(cv.alpha_, rel=1e-12)
    np.testing.assert_allclose(policy.coef, cv.coef_, rtol=1e-6, atol=1e-10)
    assert policy.intercept == pytest.approx(cv.intercept_, rel=1e-6)
    # and the paper's setting: raw design, no intercept, λ = 5
    from smda_core.config import PolicySettings
    from smda_core.policy.fit import fit_policy_arrays

    paper = fit_policy_arrays(probe_scores.coo_probe, probe_scores.coo_feature, probe_scores.coo_value,
                              len(probe_scores.probe_ids), harmful=probe_scores.harmful, y=y,
                              refused=probe_scores.refused, category=probe_scores.category, settings=PolicySettings.preset("paper"))
    ref = Ridge(alpha=5.0, fit_intercept=False).fit(paper.X, y)
    np.testing.assert_allclose(paper.coef, ref.coef_, rtol=1e-6, atol=1e-10)
