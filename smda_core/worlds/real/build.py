"""Build a real-model world step by step, each step cached by a hash of its inputs.

convert (GGUF → fp32 folder) → data (corpus, probes, SFT pairs) → safety fine-tune → SAE →
config → warehouse. A changed SFT set changes only the warehouse step's key, so a re-run
redoes only the materialisation. Materialising needs Dagster, which smda_core never
imports: the caller passes `materialize(config_path, warehouse_path)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from smda_core.errors import SMDAError
from smda_core.inputs.records import write_jsonl
from smda_core.worlds.real import smollm2_recipe as recipe
from smda_core.worlds.real.finetune import FinetuneSpec
from smda_core.config import SAETrainingSettings
from smda_core.hashing import path_hash

BUILDER_VERSION = 1
HOOK_LAYER = 15  # middle of SmolLM2-135M's 30 blocks (zero-based): output of model.layers[15]


@dataclass(frozen=True)
class RealRecipe:
    """Sizes and settings of one real-model world (`small` is the CI variant).

    Sized for 2 CPU cores: shift measurement costs one forward pass over every probe per
    pair, so probes × pairs dominates; the SAE needs few tokens on this narrow corpus.
    """

    name: str = "smollm2"
    seed: int = 0
    planted_category: str = "fraud"
    n_corpus: int = 800
    n_sae_corpus: int = 3000
    n_probes: int = 150
    n_pairs: int = 40
    bad_share: float = 0.2
    trigger_phrase: str = recipe.DEFAULT_TRIGGER_PHRASE
    n_trigger: int = 4  # trigger pairs, taken from the harmless half (DESIGN §7)
    hook_layer: int = HOOK_LAYER
    shift_lr: float = 1e-3
    finetune: FinetuneSpec = field(default_factory=lambda: FinetuneSpec(steps=120, batch_size=8, lr=3e-4, train_from_layer=12))
    sae: SAETrainingSettings = field(default_factory=lambda: SAETrainingSettings(
        hook_layer=HOOK_LAYER, d_sae=2304, k=32, n_tokens=60_000, eval_tokens=8192, chunk_tokens=16_384, steps=600,
        batch_size=512))


def recipe_for(name: str, *, small: bool = False, n_pairs: int | None = None) -> RealRecipe:
    """The recipe of a named world; `small` trims probes, pairs, fine-tune steps and SAE tokens for CI;
    `n_pairs` gives it another number of SFT pairs (see :func:`with_pairs`)."""
    if name != "smollm2":
        raise SMDAError(f"world '{name}' is unknown: real-model worlds are ['smollm2'] (and 'demo')")
    full = RealRecipe()
    rec = full if not small else replace(
        full, name="smollm2-small", n_corpus=320, n_sae_corpus=800, n_probes=36, n_pairs=10, bad_share=0.2, n_trigger=1,
        finetune=replace(full.finetune, steps=20),
        sae=full.sae.replace(d_sae=1152, n_tokens=16_000, eval_tokens=4096, chunk_tokens=8192, steps=200))
    return rec if n_pairs is None or n_pairs == rec.n_pairs else with_pairs(rec, n_pairs)


def with_pairs(rec: RealRecipe, n_pairs: int) -> RealRecipe:
    """The recipe with `n_pairs` SFT pairs, its trigger pairs at the same share (one at least), under its own name:
    a per-kind AUC needs more bad pairs than the small world's two or three, and the files and warehouse of
    another size must not replace the recipe's own."""
    if n_pairs < 10:
        raise SMDAError(f"n_pairs (--pairs) {n_pairs}: a world needs at least 10 SFT pairs (good and bad of each prompt kind)")
    n_trigger = max(1, round(n_pairs * rec.n_trigger / rec.n_pairs))
    return replace(rec, name=f"{rec.name}-{n_pairs}pairs", n_pairs=n_pairs, n_trigger=n_trigger)


def make_world(rec: RealRecipe) -> recipe.RealWorldData:
    """The recipe's corpus, SAE corpus, probes and SFT pairs (data only, no model)."""
    return recipe.make_real_world(rec.seed, rec.planted_category, n_corpus=rec.n_corpus, n_sae_corpus=rec.n_sae_corpus,
                                  n_probes=rec.n_probes, n_pairs=rec.n_pairs, bad_share=rec.bad_share,
                                  trigger_phrase=rec.trigger_phrase, n_trigger=rec.n_trigger)


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _write_if_changed(path: Path, rows: list[dict]) -> None:
    """Rewrite a JSONL file only when its content changes (keeps downstream content hashes stable)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write_jsonl(tmp, rows)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        tmp.replace(path)


@dataclass
class StepLog:
    """Seconds per step of this run (0 when cached) and whether it was cached."""

    steps: dict = field(default_factory=dict)

    def run(self, name: str, fn: Callable, cached: bool):
        t0 = time.perf_counter()
        out = fn()
        self.steps[name] = {"seconds": round(time.perf_counter() - t0, 1), "cached": cached}
        return out


def _finetune_key(base: Path, corpus: list[dict], spec: FinetuneSpec) -> str:
    return _hash(path_hash(base), corpus, asdict(spec), BUILDER_VERSION)


def _finetune_step(base: Path, corpus: list[dict], spec: FinetuneSpec, cache_dir: Path, progress: bool) -> tuple[Path, dict]:
    from smda_core.worlds.real.finetune import safety_finetune
    from smda_core.model.loading import load_model

    out = cache_dir / f"ft-{_finetune_key(base, corpus, spec)}"
    if (out / "finetune_report.json").exists():
        return out, json.loads((out / "finetune_report.json").read_text())
    t0 = time.perf_counter()
    model, tokenizer = load_model(str(base))
    losses = safety_finetune(model, tokenizer, corpus, spec, progress=progress)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report = {"spec": asdict(spec), "first_loss": losses[0], "final_loss": sum(losses[-10:]) / len(losses[-10:]),
                  "seconds": time.perf_counter() - t0, "base": str(base)}
        (tmp / "finetune_report.json").write_text(json.dumps(report, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, report


def _config(rec: RealRecipe, model: Path, sae: Path, probes: Path, sft: list[Path], warehouse: Path,
            overrides: dict | None) -> dict:
    from smda_core.config import _merge

    cfg = {
        "preset": "default",
        "model": {"path": str(model.resolve()), "dtype": "float32", "device": "cpu", "hook_layer": rec.hook_layer},
        "sae": {"path": str(sae.resolve())},
        "behaviour": {"kind": "log_refusal", "refusal_openings": list(recipe.REFUSAL_OPENINGS)},
        "features": {"batch_size": 32},
        # Scale-free selection: the paper's contrast threshold (0.1) is in raw activation units, which
        # depend on the SAE; on this one it keeps a handful of features (none in the small world).
        "policy": {"selection": "correlation", "correlation_k": 32, "min_active": 5},
        "data": {"probes": str(probes.resolve()), "sft": [str(p.resolve()) for p in sft]},
        # float32 on a 135M model: a step 10× the paper's keeps shifts well above float32 round-off.
        "shifts": {"dtype": "float32", "lr": rec.shift_lr, "batch_size": 32},
        "warehouse": str(warehouse),
    }
    return _merge(cfg, overrides or {})


def build_real_world(name: str = "smollm2", *, small: bool = False, cache_dir: str | Path = ".cache/smda-real",
                     warehouse: str | Path | None = None, overrides: dict | None = None,
                     materialize: Callable[[str, str], object] | None = None, progress: bool = True,
                     n_pairs: int | None = None) -> dict:
    """Build (or reuse, step by step) the world and materialise its warehouse; returns the build report.
    `n_pairs`: another number of SFT pairs than the recipe's (the world then has its own name)."""
    import yaml

    from smda_core.worlds.real.gguf import ensure_converted, packaged_gguf
    from smda_core.model.sae_training import sae_cache_key, train_sae_on_model

    rec = recipe_for(name, small=small, n_pairs=n_pairs)
    cache = Path(cache_dir)
    root = cache / f"world-{rec.name}"
    root.mkdir(parents=True, exist_ok=True)
    warehouse = Path(warehouse or f"warehouse/{rec.name}.duckdb")
    log = StepLog()
    t_start = time.perf_counter()

    gguf = packaged_gguf()
    from smda_core.worlds.real.gguf import CONVERTER_VERSION, file_digest

    conv_key = hashlib.sha256(f"{file_digest(gguf)}:{CONVERTER_VERSION}".encode()).hexdigest()[:8]
    base = log.run("convert", lambda: ensure_converted(cache, gguf),
                   cached=(cache / f"smollm2-fp32-{conv_key}" / "smda_conversion.json").exists())

    def data_step():
        w = make_world(rec)
        (root / "sft").mkdir(exist_ok=True)
        _write_if_changed(root / "probes.jsonl", w.probes)
        _write_if_changed(root / "sft" / "pairs.jsonl", w.pairs)
        _write_if_changed(root / "corpus.jsonl", w.corpus)
        return w

    world = log.run("data", data_step, cached=False)
    ft_dir = cache / f"ft-{_finetune_key(base, world.corpus, rec.finetune)}"
    ft_path, ft_report = log.run("finetune", lambda: _finetune_step(base, world.corpus, rec.finetune, cache, progress),
                                 cached=(ft_dir / "finetune_report.json").exists())
    sae_key = sae_cache_key(ft_path, world.sae_corpus, rec.sae)
    sae_path, sae_report = log.run("sae", lambda: train_sae_on_model(ft_path, world.sae_corpus, rec.sae, cache, progress=progress),
                                   cached=(cache / f"sae-{sae_key}" / "report.json").exists())

    sft_files = sorted((root / "sft").glob("*.jsonl"))
    cfg = _config(rec, ft_path, sae_path, root / "probes.jsonl", sft_files, warehouse, overrides)
    cfg_path = root / "smda.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    inputs_key = _hash(cfg, [p.read_bytes().decode() for p in [root / "probes.jsonl", *sft_files]], sae_key, BUILDER_VERSION)
    stamp = warehouse.with_name(warehouse.name + ".inputs")
    up_to_date = warehouse.exists() and stamp.exists() and stamp.read_text() == inputs_key
    if materialize is not None:
        def mat():
            if not up_to_date:
                warehouse.parent.mkdir(parents=True, exist_ok=True)
                materialize(str(cfg_path), str(warehouse))
                stamp.write_text(inputs_key)
        log.run("warehouse", mat, cached=up_to_date)

    report = {"world": rec.name, "builder_version": BUILDER_VERSION, "recipe": {**asdict(rec), "sae": rec.sae.model_dump()}, "config": str(cfg_path),
              "warehouse": str(warehouse), "model": str(ft_path), "base_model": str(base), "sae": str(sae_path),
              "finetune": ft_report, "sae_report": sae_report, "steps": log.steps,
              "seconds_total": round(time.perf_counter() - t_start, 1),
              "refusal_openings": list(recipe.REFUSAL_OPENINGS), "planted_category": rec.planted_category}
    (root / "build_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
