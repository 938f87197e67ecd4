"""LDS and stability machinery on cases with a known answer, against scipy's Spearman."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from smda_core import validation


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 30).astype(float)
    b = a + rng.normal(size=30)
    assert validation.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


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
    np.testing.assert_allclose(validation.matched_cosines(a, b), 1.0)
