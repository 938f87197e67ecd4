"""Curation: the experiment can see what it should, metrics are right, retraining is deterministic, rules are safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smda_core.experiments import curation
from smda_core.api import read_pairs
from smda_core.config import CurationSettings
from smda_core.errors import SMDAError


@pytest.fixture(scope="module")
def setup(runtime, probe_scores, policy):
    pairs = read_pairs(runtime.sources, runtime.probes, runtime.config)
    rows = list(zip(pairs["pair_id"].to_pylist(), pairs["prompt"].to_pylist(), pairs["response"].to_pylist()))
    kinds = np.asarray(pairs["kind"].to_pylist())
    ids = np.asarray(pairs["pair_id"].to_pylist())
    by_kind = {k: ids[kinds == k].tolist() for k in curation.BAD_KINDS}
    ev = curation.eval_set(runtime, policy.heldout, probe_scores.harmful, probe_scores.category)
    return rows, by_kind, ev


def test_curation_variants_and_comparison_equal_an_independent_retraining(runtime, setup):
    """A drop set that is half right: every variant is the retraining it claims to be, and the comparison
    (share of the oracle's gain, drop precision and recall) equals the one counted by hand."""
    rows, by_kind, ev = setup
    oracle = [i for drop in by_kind.values() for i in drop]
    good = [r[0] for r in rows if r[0] not in set(oracle)]
    dropped = oracle[: len(oracle) // 2] + good[:3]
    before = {k: v.clone() for k, v in runtime.model.state_dict().items()}
    settings = CurationSettings()
    variants = curation.run_curation(runtime.model, runtime.tokenizer, runtime.sae, ev, rows, dropped, settings=settings,
                                     oracle=by_kind, n_random=2, progress=False)
    by = {v.variant: v for v in variants}
    assert {v.variant for v in variants} == {"base", "full", "curated", "oracle", "random_seed_0", "random_seed_1",
                                             *(f"oracle:{k}" for k, drop in by_kind.items() if drop)}
    kept = [(p, r) for i, p, r in rows if i not in set(dropped)]
    independent = curation.evaluate(curation.retrain(runtime.model, runtime.tokenizer, kept, settings), runtime.sae, ev)
    assert by["curated"].metrics == independent and by["curated"].n_pairs == len(kept)
    assert by["oracle"].n_pairs == len(rows) - len(oracle) and len(by["random_seed_0"].dropped) == len(dropped)
    trigger = by_kind["harmless_trigger"]
    assert sorted(by["oracle:harmless_trigger"].dropped) == sorted(trigger) and trigger
    # the planted bad pairs do hurt: without them harmful requests are refused more (recall). Overall F1 need not
    # rise: trigger pairs also cure over-refusal of harmless requests with their phrase (DESIGN §7)
    assert by["oracle"].metrics["recall"] > by["full"].metrics["recall"]
    cmp = curation.comparison(variants, set(oracle))
    full, cur, orc = (by[v].metrics["f1"] for v in ("full", "curated", "oracle"))
    assert cmp["share_of_oracle_gain"] == pytest.approx((cur - full) / (orc - full))
    assert cmp["drop_precision"] == pytest.approx((len(oracle) // 2) / len(dropped))
    assert cmp["drop_recall"] == pytest.approx((len(oracle) // 2) / len(oracle))
    assert cmp["oracle:harmless_trigger"] == by["oracle:harmless_trigger"].metrics["f1"]
    rand = [by[f"random_seed_{i}"].metrics["f1"] for i in range(2)]
    assert cmp["random_mean"] == pytest.approx(np.mean(rand)) and cmp["random_sd"] == pytest.approx(np.std(rand, ddof=1))
    assert all(torch.equal(before[k], v) for k, v in runtime.model.state_dict().items()), "the base model was modified"


def test_comparison_takes_each_variant_mean_over_seeds():
    """With several retraining seeds, every figure of the comparison is the mean of the variant's seeds, and the
    random control's spread is across removals (of their seed means), counted here by hand."""
    f1 = {("base", 0): .5, ("full", 0): .70, ("full", 1): .74, ("curated", 0): .80, ("curated", 1): .78,
          ("oracle", 0): .90, ("oracle", 1): .86, ("oracle:harmful_compliance", 0): .75, ("oracle:harmful_compliance", 1): .77,
          ("random_seed_0", 0): .71, ("random_seed_0", 1): .69, ("random_seed_1", 0): .60, ("random_seed_1", 1): .66}
    variants = [curation.Variant(name, 10, {"f1": v}, ["a", "b"] if name == "curated" else [], seed)
                for (name, seed), v in f1.items()]
    cmp = curation.comparison(variants, {"a", "c"})
    assert cmp["seeds"] == 2 and cmp["full"] == pytest.approx(.72) and cmp["curated"] == pytest.approx(.79)
    assert cmp["oracle"] == pytest.approx(.88) and cmp["oracle:harmful_compliance"] == pytest.approx(.76)
    assert cmp["share_of_oracle_gain"] == pytest.approx((.79 - .72) / (.88 - .72))
    assert cmp["random_mean"] == pytest.approx((.70 + .63) / 2)
    assert cmp["random_sd"] == pytest.approx(np.std([.70, .63], ddof=1))
    assert cmp["drop_precision"] == cmp["drop_recall"] == pytest.approx(.5)


def test_retraining_with_the_same_seed_is_bit_identical(runtime, setup):
    rows, _, ev = setup
    pairs = [(p, r) for _, p, r in rows[:40]]
    settings = CurationSettings(epochs=1)
    a = curation.evaluate(curation.retrain(runtime.model, runtime.tokenizer, pairs, settings), runtime.sae, ev)
    b = curation.evaluate(curation.retrain(runtime.model, runtime.tokenizer, pairs, settings), runtime.sae, ev)
    assert a == b
    c = curation.evaluate(curation.retrain(runtime.model, runtime.tokenizer, pairs, CurationSettings(epochs=1, seed=1)),
                          runtime.sae, ev)
    assert c != a


def test_soft_metrics_equal_an_independent_computation():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50)
    h = rng.uniform(size=50) < 0.5
    tp = sum(pi for pi, hi in zip(p, h) if hi)
    fp = sum(pi for pi, hi in zip(p, h) if not hi)
    fn = sum(1 - pi for pi, hi in zip(p, h) if hi)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    got = curation.soft_metrics(p, h)
    assert got["precision"] == pytest.approx(precision) and got["recall"] == pytest.approx(recall)
    assert got["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert got["correctness"] == pytest.approx((np.mean([x for x, y in zip(p, h) if y]) + np.mean([1 - x for x, y in zip(p, h) if not y])) / 2)


def _table():
    ids = np.array([f"p{i}" for i in range(8)])
    harmful = np.array([True] * 4 + [False] * 4)
    kind = np.array(["harmful_refusal"] * 3 + ["harmful_compliance"] + ["harmless_compliance"] * 3 + ["harmless_refusal"])
    align = np.array([3.0, 2.0, 4.0, -5.0, -1.0, -2.0, -3.0, 6.0])
    return curation.PairTable(ids, harmful, kind, np.array([0, 1, 0, 1, 0, 0, 0, 0], bool), {"alignment": align})


def test_rules_select_what_they_say():
    t = _table()
    # quantitative with the paper's score: harmful pairs below the harmless median (-1.5), harmless pairs above
    # the harmful median (2.5)
    assert curation.select_drops("quantitative:alignment", t) == ["p3", "p7"]
    assert curation.select_drops("flagged", t) == ["p1", "p3"]
    assert curation.select_drops("lowest:alignment:2", t) == ["p3", "p6"]
    assert curation.select_drops("oracle", t) == ["p3", "p7"]
    assert curation.select_drops("sql:SELECT 1", t, sql=lambda q: ["p0"]) == ["p0"]


def test_quantitative_drops_the_low_outliers_of_a_kind_free_score():
    rng = np.random.default_rng(3)
    s = np.concatenate([rng.normal(0.0, 1.0, 40), [-9.0, -7.5, 8.0]])
    ids = np.array([f"p{i:02d}" for i in range(len(s))])
    t = curation.PairTable(ids, np.arange(len(s)) % 2 == 0, None, np.zeros(len(s), bool), {"score": s, "margin_shift": -s})
    med = np.median(s)
    mad = 1.4826 * np.median(np.abs(s - med))
    want = sorted(ids[(s - med) / mad < -3].tolist())
    assert want == ["p40", "p41"]  # the two planted low scores, not the high one
    assert curation.select_drops("quantitative", t) == want  # the recommended score (`score`) by default
    neg = -s
    z = (neg - np.median(neg)) / (1.4826 * np.median(np.abs(neg - np.median(neg))))
    assert "p42" in curation.select_drops("quantitative:margin_shift", t) == sorted(ids[z < -3].tolist())


def test_rules_that_drop_every_pair_or_none_are_refused():
    t = _table()
    with pytest.raises(SMDAError, match="drops every pair"):
        curation.select_drops("lowest:alignment:8", t)
    with pytest.raises(SMDAError, match="drops no pair"):
        curation.select_drops("lowest:alignment:0", t)
    with pytest.raises(SMDAError, match="unknown rule"):
        curation.select_drops("best", t)
