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


def test_every_schema_error_is_named_at_once_with_its_key_and_a_suggestion():
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"metadata": [{"path": "m.csv", "kee": "id"}]}, "attribution": {"methods": ["refit", "linar"]},
                      "behaviour": {"refusal_openings": []}, "model": {"dtype": "float33"}})
    message = str(err.value)
    assert "unknown key 'data.metadata[0].kee'; did you mean 'key'?" in message, message
    assert "'attribution.methods[1]'" in message and "did you mean 'linear'?" in message, message
    assert "'model.dtype'" in message and "did you mean 'float32'?" in message, message
    assert "'behaviour.refusal_openings'" in message and "empty" in message, message  # never silently the world's
    assert "'data.metadata[0].key'" in message and "missing" in message, message


def test_a_bad_config_is_refused_before_any_run_or_model_load(tmp_path):
    """Reproduces: a config error surfaced only after a Dagster run had started and the model had loaded
    (30-50 s), after 80-100 lines of DEBUG log; an empty list of refusal openings was silently replaced by
    the demo world's."""
    import time

    from conftest import CACHE, smda

    (tmp_path / "sft").mkdir()
    config = tmp_path / "smda.yaml"
    config.write_text(f"demo: {{cache_dir: {CACHE}}}\nwarehouse: wh/warehouse.duckdb\nwatch: {{folder: sft}}\n"
                      "data:\n  probes: nope.jsonl\n  sft: [missing.jsonl]\n  metadata: [{path: labels.csv, key: id}]\n"
                      "policy: {labels_path: labels.json}\nbehaviour: {refusal_openings: []}\n")
    started = time.monotonic()
    out = smda("ingest", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stdout
    assert "'behaviour.refusal_openings'" in lines[0], lines[0]
    config.write_text(config.read_text().replace("behaviour: {refusal_openings: []}\n", ""))
    out = smda("ingest", "--config", str(config), cwd=tmp_path)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), out.stdout
    for key, file in (("data.probes", "nope.jsonl"), ("data.sft[0]", "missing.jsonl"), ("data.metadata[0].path", "labels.csv"),
                      ("policy.labels_path", "labels.json")):
        assert f"'{key}'" in lines[0] and file in lines[0], (key, lines[0])
    assert "working directory" in lines[0]  # the suggestion: where relative paths are read from
    assert time.monotonic() - started < 60
    assert not (tmp_path / "wh").exists()  # no run started: no warehouse, no Dagster instance
