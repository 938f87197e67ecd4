"""What a new user hit (issue 17): an interrupted demo-world build, a short SAE corpus, `smda demo` without
--config, and the `lambda` column DuckDB makes you quote."""

from __future__ import annotations

import json

import pytest

from conftest import demo_config


class Interrupted(Exception):
    pass


def test_an_interrupted_demo_world_build_resumes_after_its_last_finished_stage(tmp_path, monkeypatch):
    from smda_core.worlds.demo import build

    monkeypatch.setattr(build, "MODEL_STEPS", 20)  # a real build, only shorter (warm-up = steps // 20)
    monkeypatch.setattr(build, "SAE_STEPS", 4)
    demo = demo_config(cache_dir=str(tmp_path)).demo
    calls = {"model": 0}
    train_model, train_sae = build._train_model, build._train_sae

    def counted_model(*a, **k):
        calls["model"] += 1
        return train_model(*a, **k)

    def interrupted_sae(*a, **k):
        raise Interrupted("killed while training the SAE")

    monkeypatch.setattr(build, "_train_model", counted_model)
    monkeypatch.setattr(build, "_train_sae", interrupted_sae)
    with pytest.raises(Interrupted):
        build.ensure_demo_world(demo, progress=False)
    paths = build.world_paths(demo)
    partial = paths.root.with_name(paths.root.name + ".partial")
    assert not paths.report.exists() and (partial / "model_stage.json").exists()  # the model stage is kept
    weights = (partial / "model" / "model.safetensors").read_bytes()

    monkeypatch.setattr(build, "_train_sae", train_sae)
    built = build.ensure_demo_world(demo, progress=False)
    assert calls["model"] == 1  # not trained again
    assert built.report.exists() and (built.sae / "cfg.json").exists() and not partial.exists()
    assert (built.model / "model.safetensors").read_bytes() == weights  # the SAE was trained on the saved model
    report = json.loads(built.report.read_text())
    assert report["sae"]["d_sae"] > 0 and report["seconds"]["total"] >= report["seconds"]["sae"]


def test_sae_train_says_when_the_corpus_is_shorter_than_asked(tmp_path):
    from typer.testing import CliRunner

    from smda_assets.cli import app

    def run(n_tokens: int) -> str:
        (tmp_path / "c.yaml").write_text(
            f"sae_training:\n  cache_dir: {tmp_path / str(n_tokens)}\n  d_sae: 64\n  k: 4\n  n_tokens: {n_tokens}\n"
            "  eval_tokens: 600\n  chunk_tokens: 1000\n  steps: 10\n  batch_size: 128\n"
            f"demo:\n  cache_dir: {demo_config().demo.cache_dir}\n")
        result = CliRunner().invoke(app, ["sae", "train", "-c", str(tmp_path / "c.yaml")])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    short = run(50_000_000)  # far more than the demo's pairs and probes hold
    assert "warning:" in short and "of the 50,000,000 asked for" in short
    assert "warning:" not in run(3000)


def test_demo_takes_a_config(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from smda_assets import cli

    seen = {}
    monkeypatch.setattr(cli, "_materialize", lambda config, warehouse: seen.update(config=config, warehouse=warehouse))
    monkeypatch.setattr(cli, "_show_policy", lambda path: (_ for _ in ()).throw(SystemExit(0)))
    CliRunner().invoke(cli.app, ["demo", "--config", "recipe.yaml", "--warehouse", str(tmp_path / "w.duckdb")])
    assert seen == {"config": "recipe.yaml", "warehouse": str(tmp_path / "w.duckdb")}


def test_policy_fit_has_an_unquoted_name_for_lambda():
    from pathlib import Path

    import duckdb

    con = duckdb.connect()
    con.execute("CREATE SCHEMA smda")
    con.execute("""CREATE TABLE smda.policy_fit AS SELECT 1.5 AS "lambda", 0.9 AS r2, 0.8 AS loo_r2, 0.9 AS accuracy,
        0.5 AS majority_baseline, 0.1 AS intercept, 0.0 AS threshold, 10 AS n_probes, 3 AS k, 'default' AS preset,
        'm' AS model, 's' AS sae, 'h' AS hook, 'last' AS position, 'log_refusal' AS behaviour, 'raw' AS design,
        'float64' AS dtype, 'f' AS formula, 'margin_shift' AS score_name, now() AS fitted_at, 'v' AS policy_version,
        NULL AS warnings""")
    con.execute((Path(__file__).resolve().parents[1] / "sql" / "11_v_policy_fit.sql").read_text())
    assert con.execute("SELECT ridge_lambda FROM smda.v_policy_fit").fetchone() == (1.5,)


def test_the_demo_sae_has_as_many_active_features_as_the_recipe_says(tmp_path, monkeypatch):
    import torch

    from smda_core.model.loading import load_model, load_sae
    from smda_core.worlds.demo import build

    monkeypatch.setattr(build, "MODEL_STEPS", 20)  # a real build, only shorter
    monkeypatch.setattr(build, "SAE_STEPS", 4)
    demo = demo_config(cache_dir=str(tmp_path), sae_k=4).demo
    assert build.recipe_hash(demo) != build.recipe_hash(demo_config(cache_dir=str(tmp_path)).demo)
    paths = build.ensure_demo_world(demo, progress=False)
    model, tokenizer = load_model(str(paths.model))
    world = build.make_demo_world(demo)
    acts = build._residuals(model, build._encode_conversations(tokenizer, world.corpus[:20]), build.HOOK_LAYER,
                            tokenizer.pad_token_id)
    for folder in (paths.sae, build.demo_sae_for_seed(demo, demo.seed + 1, progress=False)):
        with torch.no_grad():
            active = (load_sae(path=str(folder)).encode(acts) > 0).sum(-1)
        assert int(active.max()) == 4, folder  # TopK: never more than k per token, and k where k are positive


def test_an_experiment_refuses_a_config_of_another_world(demo_warehouse, tmp_path):
    """`smda validate stability --warehouse W` without the config W was built with ran the default world's model
    and wrote its rows into W; now it stops before any model loads, names both and writes nothing."""
    import shutil

    import yaml

    from conftest import CACHE
    from smda_assets.experiments import stability
    from smda_assets.resources import SMDAResource
    from smda_core.errors import ConfigError
    from smda_core.worlds.demo.build import world_paths

    wh = tmp_path / "wh.duckdb"
    shutil.copy(demo_warehouse, wh)
    other = tmp_path / "other-sae"
    shutil.copytree(world_paths(demo_config().demo).sae, other)
    cfg = tmp_path / "smda.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"cache_dir": CACHE}, "sae": {"path": str(other)}, "warehouse": str(wh)}))
    before = wh.read_bytes()
    with pytest.raises(ConfigError, match="another model or SAE") as err:
        stability(SMDAResource(config_path=str(cfg)), sae_seeds=2, progress=False)
    assert "smda-demo-sae:" in str(err.value) and str(other) in str(err.value) and "--config" in str(err.value)
    assert wh.read_bytes() == before
