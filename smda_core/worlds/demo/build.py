"""Build the demo world on disk: tokenizer, tiny Llama chat model, TopK SAE, probes, SFT pairs.

Deterministic from the recipe; cached in `<cache_dir>/<recipe hash>/` and written
atomically (a crash mid-build leaves no half world behind).
"""

from __future__ import annotations

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
    tmp = paths.root.with_name(paths.root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build_demo_world(demo, DemoPaths(tmp), progress=progress)
        shutil.rmtree(paths.root, ignore_errors=True)
        tmp.rename(paths.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


def _train_sae(model, tokenizer, data, *, seed: int, progress: bool):
    from smda_core.model.sae_training import train_topk_sae

    acts = _residuals(model, data[:4000], HOOK_LAYER, tokenizer.pad_token_id)
    return train_topk_sae(acts, d_sae=512, k=16, hook_name=f"blocks.{HOOK_LAYER}.hook_resid_post",
                          model_name="smda-demo-llama", steps=1500, seed=seed, progress=progress)


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
    sae, _ = _train_sae(model, tokenizer, _encode_conversations(tokenizer, world.corpus), seed=seed, progress=progress)
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


def build_demo_world(demo: DemoSection, paths: DemoPaths, *, progress: bool = True) -> dict:
    """Write every artefact of the demo world into `paths.root`; returns the build report."""
    t0 = time.perf_counter()
    torch.manual_seed(demo.seed)
    world = make_demo_world(demo)
    texts = [c["prompt"] + " " + c["response"] for c in world.corpus]
    texts += [p["prompt"] for p in world.probes] + [p["prompt"] + " " + p["response"] for p in world.pairs]
    texts += list(recipe.REFUSAL_OPENINGS + recipe.COMPLIANCE_OPENINGS)
    tokenizer = _tokenizer(texts)
    vocab_size = max(tokenizer.get_vocab().values()) + 1  # WordLevel can leave gaps in ids
    model = _model(vocab_size, tokenizer, demo.seed)
    data = _encode_conversations(tokenizer, world.corpus)
    final_loss = _train_model(model, data, seed=demo.seed, steps=800, batch_size=64,
                              pad_id=tokenizer.pad_token_id, progress=progress)
    t_model = time.perf_counter()
    model.save_pretrained(paths.model)
    tokenizer.save_pretrained(paths.model)

    sae, sae_report = _train_sae(model, tokenizer, data, seed=demo.seed, progress=progress)
    sae.save_model(str(paths.sae))
    t_sae = time.perf_counter()

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
        "final_train_loss": final_loss,
        "sae": sae_report.as_dict(),
        "seconds": {"model": t_model - t0, "sae": t_sae - t_model, "total": time.perf_counter() - t0},
    }
    # What downstream code may read (the planted category is in the report only, for humans and tests).
    paths.world.write_text(json.dumps({"hook_layer": HOOK_LAYER, "refusal_openings": list(recipe.REFUSAL_OPENINGS),
                                       "compliance_openings": list(recipe.COMPLIANCE_OPENINGS)}, indent=2))
    paths.report.write_text(json.dumps(report, indent=2))
    return report
