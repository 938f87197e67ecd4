"""Build the demo world on disk: tokenizer, tiny Llama chat model, TopK SAE, probes, SFT pairs.

Deterministic from the recipe; cached in `<cache_dir>/<recipe hash>/` and published
atomically (a crash mid-build leaves no half world behind). The build runs in
`<recipe hash>.partial/` in stages (model, then SAE), each finished stage marked by a file
written last: an interrupted build resumes from the last finished stage instead of starting over,
and a second build of the same recipe waits for the first (a lock file) and then finds it built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from smda_core.config import DemoSection
from smda_core.worlds.demo import recipe
from smda_core.inputs.records import write_jsonl
from smda_core.model.training import make_optimizer, pad_sequences, sft_batch, train_steps, warmup_cosine

log = logging.getLogger(__name__)

BUILDER_VERSION = 5
MODEL_STEPS, SAE_STEPS = 800, 1500  # optimiser steps of the demo model and of its SAE (tests shrink them)
HOOK_LAYER = 2  # middle block of 4 (zero-based): output of model.layers[2]
SPECIALS = ["<|pad|>", "<|unk|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class DemoPaths:
    """Where one built world lives."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def sae(self) -> Path:
        return self.root / "sae"

    @property
    def probes(self) -> Path:
        return self.root / "probes.jsonl"

    @property
    def sft_dir(self) -> Path:
        return self.root / "sft"

    @property
    def world(self) -> Path:
        return self.root / "world.json"

    @property
    def report(self) -> Path:
        return self.root / "build_report.json"


def recipe_hash(demo: DemoSection) -> str:
    fields = demo.model_dump(exclude={"cache_dir"})
    fields["builder_version"] = BUILDER_VERSION
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def world_paths(demo: DemoSection) -> DemoPaths:
    return DemoPaths(Path(demo.cache_dir) / recipe_hash(demo))


def ensure_demo_world(demo: DemoSection, *, progress: bool = True) -> DemoPaths:
    """Return the cached world for this recipe, building it first if needed."""
    paths = world_paths(demo)
    if paths.report.exists():
        return paths
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.root.with_name(paths.root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per recipe; the next one finds the world built
        if paths.report.exists():
            return paths
        partial = paths.root.with_name(paths.root.name + ".partial")
        partial.mkdir(exist_ok=True)
        build_demo_world(demo, DemoPaths(partial), progress=progress)  # resumes from the stages already done
        shutil.rmtree(paths.root, ignore_errors=True)
        partial.rename(paths.root)
    return paths


def _tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", unk_token="<|unk|>", eos_token="<|end|>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _model(vocab_size: int, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=96, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)
    return LlamaForCausalLM(cfg)


def _encode_conversations(tokenizer, conversations: list[dict]) -> list[tuple[list[int], int]]:
    from smda_core.model.chat import encode_pair

    return [encode_pair(tokenizer, c["prompt"], c["response"], name="demo corpus") for c in conversations]


def _train_model(model, data: list[tuple[list[int], int]], *, seed: int, steps: int, batch_size: int, pad_id: int, progress: bool) -> float:
    """AdamW on the response tokens of the chat corpus (the prompt is context, not target)."""
    rng = random.Random(seed)
    opt = make_optimizer(list(model.parameters()), "adamw", lr=3e-3, weight_decay=0.01, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, steps // 20, steps)
    batches = (sft_batch([data[rng.randrange(len(data))] for _ in range(batch_size)], pad_id) for _ in range(steps))
    model.train()
    losses = train_steps(model, batches, opt, scheduler=sched, clip_norm=1.0, progress=progress,
                         desc="train demo model", total=steps)
    model.eval()
    return losses[-1] if losses else float("nan")


@torch.no_grad()
def _residuals(model, data: list[tuple[list[int], int]], layer: int, pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """Residual-stream vectors after block `layer` at every token of the given sequences."""
    from smda_core.model.loading import capture_residual

    chunks = []
    for start in range(0, len(data), batch_size):
        batch = data[start: start + batch_size]
        ids, mask, _ = pad_sequences([seq for seq, _ in batch], pad_id)
        with capture_residual(model, layer) as store:
            model(input_ids=ids, attention_mask=mask)
        chunks.append(store["h"][mask.bool()])
    return torch.cat(chunks)


def _train_sae(model, tokenizer, data, *, seed: int, k: int, progress: bool):
    from smda_core.model.sae_training import train_topk_sae

    acts = _residuals(model, data[:4000], HOOK_LAYER, tokenizer.pad_token_id)
    return train_topk_sae(acts, d_sae=512, k=k, hook_name=f"blocks.{HOOK_LAYER}.hook_resid_post",
                          model_name="smda-demo-llama", steps=SAE_STEPS, seed=seed, progress=progress)


def demo_sae_for_seed(demo: DemoSection, seed: int, *, progress: bool = True) -> Path:
    """The demo's SAE retrained with another seed (same activations, same recipe), cached beside the world.

    The SAE is a trained object: stability checks compare policies and scores across such seeds.
    """
    from smda_core.model.loading import load_model

    paths = ensure_demo_world(demo, progress=progress)
    if seed == demo.seed:
        return paths.sae
    out = paths.root / f"sae_seed{seed}"
    if (out / "cfg.json").exists():
        return out
    world = make_demo_world(demo)
    model, tokenizer = load_model(str(paths.model))
    sae, _ = _train_sae(model, tokenizer, _encode_conversations(tokenizer, world.corpus), seed=seed, k=demo.sae_k,
                        progress=progress)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    sae.save_model(str(tmp))
    tmp.rename(out)
    return out


def make_demo_world(demo: DemoSection) -> recipe.World:
    """The recipe's corpus, probes and SFT pairs (no model)."""
    try:
        return recipe.make_world(demo.seed, demo.planted_category, demo.n_probes, demo.n_pairs, demo.bad_share,
                                 trigger_phrase=demo.trigger_phrase, trigger_share=demo.trigger_share)
    except ValueError as exc:
        from smda_core.errors import ConfigError

        raise ConfigError(f"demo: {exc}") from None


def _model_stage(demo: DemoSection, world: recipe.World, paths: DemoPaths, *, progress: bool):
    """The trained demo model and tokenizer: loaded when an earlier build saved them, else trained and saved.

    Returns (model, tokenizer, stage record); the record (`model_stage.json`, written last) marks the stage done.
    """
    done = paths.root / "model_stage.json"
    if done.exists():
        from smda_core.model.loading import load_model

        log.info("demo world: resuming after the model stage (%s)", paths.model)
        model, tokenizer = load_model(str(paths.model))
        return model, tokenizer, json.loads(done.read_text())
    t0 = time.perf_counter()
    torch.manual_seed(demo.seed)
    texts = [c["prompt"] + " " + c["response"] for c in world.corpus]
    texts += [p["prompt"] for p in world.probes] + [p["prompt"] + " " + p["response"] for p in world.pairs]
    texts += list(recipe.REFUSAL_OPENINGS + recipe.COMPLIANCE_OPENINGS)
    tokenizer = _tokenizer(texts)
    model = _model(max(tokenizer.get_vocab().values()) + 1, tokenizer, demo.seed)
    data = _encode_conversations(tokenizer, world.corpus)
    final_loss = _train_model(model, data, seed=demo.seed, steps=MODEL_STEPS, batch_size=64,
                              pad_id=tokenizer.pad_token_id, progress=progress)
    shutil.rmtree(paths.model, ignore_errors=True)  # a half-written folder of an interrupted save
    model.save_pretrained(paths.model)
    tokenizer.save_pretrained(paths.model)
    stage = {"final_train_loss": final_loss, "seconds": time.perf_counter() - t0}
    done.write_text(json.dumps(stage))
    return model, tokenizer, stage


def _sae_stage(demo: DemoSection, world: recipe.World, paths: DemoPaths, model, tokenizer, *, progress: bool) -> dict:
    """The demo SAE (trained and saved unless an earlier build did); returns its stage record (`sae_stage.json`)."""
    done = paths.root / "sae_stage.json"
    if done.exists() and (paths.sae / "cfg.json").exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    data = _encode_conversations(tokenizer, world.corpus)
    sae, sae_report = _train_sae(model, tokenizer, data, seed=demo.seed, k=demo.sae_k, progress=progress)
    shutil.rmtree(paths.sae, ignore_errors=True)
    sae.save_model(str(paths.sae))
    stage = {"sae": sae_report.as_dict(), "seconds": time.perf_counter() - t0}
    done.write_text(json.dumps(stage))
    return stage


def build_demo_world(demo: DemoSection, paths: DemoPaths, *, progress: bool = True) -> dict:
    """Write every artefact of the demo world into `paths.root`; returns the build report."""
    world = make_demo_world(demo)
    model, tokenizer, model_stage = _model_stage(demo, world, paths, progress=progress)
    vocab_size = max(tokenizer.get_vocab().values()) + 1  # WordLevel can leave gaps in ids
    sae_stage = _sae_stage(demo, world, paths, model, tokenizer, progress=progress)

    write_jsonl(paths.probes, world.probes)
    paths.sft_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(paths.sft_dir / "pairs.jsonl", world.pairs)
    report = {
        "recipe": demo.model_dump(exclude={"cache_dir"}),
        "builder_version": BUILDER_VERSION,
        "hook_layer": HOOK_LAYER,
        "refusal_openings": list(recipe.REFUSAL_OPENINGS),
        "compliance_openings": list(recipe.COMPLIANCE_OPENINGS),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": vocab_size,
        "final_train_loss": model_stage["final_train_loss"],
        "sae": sae_stage["sae"],
        "seconds": {"model": model_stage["seconds"], "sae": sae_stage["seconds"],
                    "total": model_stage["seconds"] + sae_stage["seconds"]},
    }
    # What downstream code may read (the planted category is in the report only, for humans and tests).
    paths.world.write_text(json.dumps({"hook_layer": HOOK_LAYER, "refusal_openings": list(recipe.REFUSAL_OPENINGS),
                                       "compliance_openings": list(recipe.COMPLIANCE_OPENINGS)}, indent=2))
    paths.report.write_text(json.dumps(report, indent=2))
    return report
