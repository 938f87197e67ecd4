"""`smda sae train` on the demo model: sae-lens layout, caching, exact resume, an honest report."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tests.conftest import demo_config

SETTINGS = {"d_sae": 256, "k": 8, "n_tokens": 6000, "eval_tokens": 1200, "chunk_tokens": 1500, "steps": 240, "batch_size": 256}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from smda_core.api import train_sae as train_sae_from_config

    cfg = demo_config().model_copy(update={"sae_training": demo_config(
    ).sae_training.model_copy(update={**SETTINGS, "cache_dir": str(tmp_path_factory.mktemp("sae"))})})
    path, report = train_sae_from_config(cfg, progress=False)
    return cfg, path, report


def test_saved_sae_loads_with_sae_lens(trained):
    from sae_lens import SAE

    _, path, report = trained
    sae = SAE.load_from_disk(str(path))
    assert sae.cfg.d_sae == 256 and sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert report["l0"] <= 8 + 1e-9 and 0 <= report["dead_share"] < 0.5
    assert report["explained_variance"] > 0.5


def test_second_call_is_cached(trained):
    import time

    from smda_core.api import train_sae as train_sae_from_config

    cfg, path, report = trained
    t0 = time.perf_counter()
    path2, report2 = train_sae_from_config(cfg, progress=False)
    assert path2 == path and report2 == report
    assert time.perf_counter() - t0 < 30  # loads the model, trains nothing


def test_reported_explained_variance_is_recomputed_from_fresh_activations(trained):
    """Re-run the model (full forward, the runtime's hook) on the held-out sequences and recompute EV from the saved SAE."""
    from sae_lens import SAE

    from smda_core.worlds.demo.build import ensure_demo_world
    from smda_core.model.loading import capture_residual, load_model
    from smda_core.model.sae_training import _encode_corpus, read_corpus

    cfg, path, report = trained
    paths = ensure_demo_world(cfg.demo, progress=False)
    model, tok = load_model(str(paths.model))
    rows = read_corpus([*sorted(paths.sft_dir.glob("*.jsonl")), paths.probes])
    random.Random(cfg.sae_training.seed).shuffle(rows)
    seqs = _encode_corpus(tok, rows, 256)
    sae = SAE.load_from_disk(str(path))
    start, xs, n_eval = report["start_position"], [], 0
    with torch.no_grad():
        for seq in seqs:  # the held-out chunk is the first sequences of the shuffled corpus
            if n_eval >= report["n_tokens_eval"]:
                break
            with capture_residual(model, 2) as store:
                model(input_ids=torch.tensor([seq]))
            xs.append(store["h"][0, start:].double())
            n_eval += len(seq) - start
        x = torch.cat(xs)
        recon = sae.decode(sae.encode(x.float())).double()
    assert x.shape[0] == report["n_tokens_eval"]
    sse = float(((recon - x) ** 2).sum())
    sst = float(((x - x.mean(0)) ** 2).sum())
    assert 1 - sse / sst == pytest.approx(report["explained_variance"], abs=1e-4)
    l0 = float((sae.encode(x.float()) > 0).sum(-1).double().mean())
    assert l0 == pytest.approx(report["l0"], abs=1e-6)


@pytest.mark.parametrize("architecture", ["batchtopk", "standard"])
def test_other_architectures_train_and_load(tmp_path, architecture):
    from sae_lens import SAE

    from smda_core.api import train_sae as train_sae_from_config

    base = demo_config()
    cfg = base.model_copy(update={"sae_training": base.sae_training.model_copy(
        update={**SETTINGS, "steps": 120, "architecture": architecture, "cache_dir": str(tmp_path)})})
    path, report = train_sae_from_config(cfg, progress=False)
    sae = SAE.load_from_disk(str(path))
    assert report["architecture"] == architecture and report["explained_variance"] > 0.5
    assert type(sae).__name__ == {"batchtopk": "JumpReLUSAE", "standard": "StandardSAE"}[architecture]


def test_interrupted_training_resumes_bit_for_bit(tmp_path):
    """A run paused mid-way and resumed ends with the same weights as an uninterrupted one."""
    from safetensors.torch import load_file

    from smda_core.worlds.demo.build import ensure_demo_world
    from smda_core.model.loading import load_model
    from smda_core.config import SAETrainingSettings
    from smda_core.model.sae_training import TrainingPaused, read_corpus, train_sae_on_model

    paths = ensure_demo_world(demo_config().demo, progress=False)
    model, tok = load_model(str(paths.model))
    rows = read_corpus([*sorted(paths.sft_dir.glob("*.jsonl"))])
    spec = SAETrainingSettings(hook_layer=2, d_sae=128, k=8, n_tokens=3000, eval_tokens=600, chunk_tokens=800, steps=60,
                        batch_size=128, checkpoint_every=1000)
    with pytest.raises(TrainingPaused):
        train_sae_on_model(paths.model, rows, spec, tmp_path / "a", model=model, tokenizer=tok, progress=False, stop_after=25)
    resumed, _ = train_sae_on_model(paths.model, rows, spec, tmp_path / "a", model=model, tokenizer=tok, progress=False)
    straight, _ = train_sae_on_model(paths.model, rows, spec, tmp_path / "b", model=model, tokenizer=tok, progress=False)
    a, b = load_file(str(resumed / "sae_weights.safetensors")), load_file(str(straight / "sae_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_cli_sae_train(tmp_path):
    from typer.testing import CliRunner

    from smda_assets.cli import app

    (tmp_path / "c.yaml").write_text(f"sae_training:\n  cache_dir: {tmp_path}\n  d_sae: 128\n  k: 4\n  n_tokens: 3000\n"
                                     "  eval_tokens: 600\n  chunk_tokens: 1000\n  steps: 40\n  batch_size: 128\n"
                                     f"demo:\n  cache_dir: {demo_config().demo.cache_dir}\n")
    result = CliRunner().invoke(app, ["sae", "train", "-c", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "explained variance" in result.output and (tmp_path / "out" / "cfg.json").exists()
