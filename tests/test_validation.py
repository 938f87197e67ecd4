"""LDS and stability machinery on cases with a known answer, against scipy's Spearman."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from smda_core.experiments import lds as validation
from smda_core.attribution.separation import spearman
from smda_core.experiments.stability import matched_cosines, stability as stability_rows


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 30).astype(float)
    b = a + rng.normal(size=30)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


def test_lds_is_one_when_attributions_equal_the_measured_effects():
    rng = np.random.default_rng(1)
    per_pair = {f"p{i}": rng.normal(size=4) for i in range(20)}
    effects = []
    for s in range(8):
        members = tuple(sorted(rng.choice(list(per_pair), size=10, replace=False).tolist()))
        total = sum(per_pair[m] for m in members)
        effects.append(validation.SubsetEffect(members, total, float(total[0])))
    res = validation.lds(effects, per_pair)
    assert res["spearman"] == pytest.approx(1.0) and res["pooled"] == pytest.approx(1.0)
    assert validation.lds(effects, {k: v[0] for k, v in per_pair.items()})["spearman"] == pytest.approx(1.0)
    flipped = validation.lds(effects, {k: -v for k, v in per_pair.items()})
    assert flipped["spearman"] == pytest.approx(-1.0)


def test_matched_cosines_find_permuted_and_rescaled_directions():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 16))
    b = -3.0 * a[[3, 1, 5, 0, 2, 4]]
    np.testing.assert_allclose(matched_cosines(a, b), 1.0)


def test_sae_training_is_bit_identical_for_a_seed():
    import torch

    from smda_core.model.sae_training import train_topk_sae

    acts = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(d_sae=32, k=4, hook_name="blocks.0.hook_resid_post", model_name="t", steps=50, batch_size=128, progress=False)
    a, ra = train_topk_sae(acts, seed=3, **kw)
    b, rb = train_topk_sae(acts, seed=3, **kw)
    c, _ = train_topk_sae(acts, seed=4, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert ra == rb
    assert not torch.equal(a.W_dec, c.W_dec)


def test_stability_across_sae_seeds_stores_figures_equal_to_an_independent_computation(tmp_path, runtime):
    import yaml

    from conftest import CACHE
    from smda_assets.experiments import stability
    from smda_assets.resources import SMDAResource
    from smda_core.store.query import query

    cfg = tmp_path / "smda.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"cache_dir": CACHE}, "warehouse": str(tmp_path / "warehouse.duckdb")}))
    table, runs = stability(SMDAResource(config_path=str(cfg)), sae_seeds=3, n_pairs=12, progress=False)
    stored = {r["score"]: r for r in query(tmp_path / "warehouse.duckdb",
                                           "SELECT * FROM smda.v_validation WHERE \"check\" = 'stability'").to_pylist()}
    for score in ("alignment_refit", "alignment_linear"):
        pairwise = [spearmanr(a.scores[score], b.scores[score]).statistic for i, a in enumerate(runs) for b in runs[i + 1:]]
        assert stored[score]["spearman"] == pytest.approx(np.mean(pairwise), abs=1e-12)
    assert stored["correctness_shift"]["spearman"] == pytest.approx(1.0)  # ΔY does not depend on the SAE
    r2 = [r.r2 for r in runs]
    assert stored["r2_spread"]["spearman"] == pytest.approx(max(r2) - min(r2))
    # the same seed twice agrees exactly
    same = stability_rows([runs[0], runs[0]], np.zeros(12, bool), np.ones(12, bool))
    assert all(r["value"] == pytest.approx(1.0) or r["score"].endswith("_spread") and r["value"] == 0 for r in same)
    # each pair's named harm feature, matched across seeds by decoder cosine (read here from each seed's SAE)
    from smda_core.model.loading import load_sae
    from smda_core.worlds.demo.build import demo_sae_for_seed

    unit = []
    for r in runs:
        dec = load_sae(path=str(demo_sae_for_seed(runtime.config.demo, r.seed, progress=False))).W_dec.detach().double().numpy()
        d = dec[np.maximum(r.harm_feature, 0)]
        unit.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    ok = np.all([np.abs((unit[i] * unit[j]).sum(1)) >= 0.9 for i in range(3) for j in range(i + 1, 3)], axis=0)
    ok &= np.all([r.harm_feature >= 0 for r in runs], axis=0)  # −1: no feature named under that seed
    assert stored["harm_feature_matched"]["spearman"] == pytest.approx(ok.mean())
