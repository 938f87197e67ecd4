from __future__ import annotations

import pytest

from smda_core.config import build_config, load_config
from smda_core.errors import ConfigError


def test_presets_fill_what_the_user_did_not_set():
    paper = build_config({"preset": "paper"})
    assert (paper.policy.design, paper.policy.intercept, paper.policy.lam) == ("raw", False, 5.0)
    assert paper.shifts.delta_x == "linearised" and paper.attribution.primary == "linear"
    override = build_config({"preset": "paper", "policy": {"lam": 2.0}})
    assert override.policy.lam == 2.0 and override.policy.design == "raw"
    default = build_config({})
    assert default.policy.lam is None and default.policy.design == "standardised" and default.policy.intercept


def test_unknown_keys_name_the_key_and_suggest_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'policy.lamda'; did you mean 'lam'"):
        build_config({"policy": {"lamda": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'modle'; did you mean 'model'"):
        build_config({"modle": {}})
    bad = tmp_path / "smda.yaml"
    bad.write_text("shifts:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"smda.yaml.*shifts.lr"):
        load_config(bad)
