"""Load a Hugging Face causal LM and a sae-lens SAE, check they fit, and hook the residual stream.

The one module that loads model weights (safetensors only; remote code only when the config
says so) and SAEs, for the runtime, the shifts, retraining and SAE training alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from smda_core.errors import ModelMismatchError, SMDAError

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """`auto` → CUDA when available; `cuda` without a GPU is an error rather than a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SMDAError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def load_model(path: str, *, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False):
    """Model and tokenizer from a local directory or a Hub id, through the Auto classes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)  # weights never from a pickle
    except OSError as exc:
        raise SMDAError(f"model '{path}': cannot load ({exc})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolve_device(device)).eval()
    return model, tokenizer


def load_sae(*, path: str | None = None, release: str | None = None, sae_id: str | None = None,
             dtype: str = "float32", device: str = "cpu"):
    """A sae-lens SAE from a local directory (`save_model` layout) or a pretrained release."""
    from sae_lens import SAE

    dev = str(resolve_device(device))
    if path is not None:
        if not (Path(path) / "cfg.json").exists():
            raise SMDAError(f"SAE directory '{path}' has no cfg.json (expected sae-lens save_model layout)")
        sae = SAE.load_from_disk(path, device=dev, dtype=dtype)
    elif release is not None and sae_id is not None:
        sae = SAE.from_pretrained(release, sae_id, device=dev, dtype=dtype)
    else:
        raise SMDAError("sae: give either `path` or both `release` and `sae_id`")
    return sae.eval()


def decoder_layers(model) -> Sequence[torch.nn.Module]:
    """The list of transformer blocks, for the architectures we know how to hook."""
    for attr in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ModelMismatchError(f"{type(model).__name__}: cannot find its decoder blocks to hook")


def hook_layer_from_sae(sae) -> int | None:
    """Block index from the SAE's hook name (`blocks.L.hook_resid_post`), when it says."""
    name = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None) or ""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] == "hook_resid_post":
        return int(parts[1])
    return None


def check_compatible(model, sae, layer: int) -> None:
    """Clear errors for the classic mismatches: hidden size vs d_in, layer out of range."""
    n_layers = len(decoder_layers(model))
    if not 0 <= layer < n_layers:
        raise ModelMismatchError(f"model.hook_layer={layer} is out of range: the model has {n_layers} blocks (0..{n_layers - 1})")
    hidden = model.config.hidden_size
    if int(sae.cfg.d_in) != int(hidden):
        raise ModelMismatchError(f"SAE d_in={sae.cfg.d_in} does not match the model's hidden size {hidden}: wrong SAE for this model or layer")


@contextmanager
def capture_residual(model, layer: int):
    """Record the output of block `layer` (= blocks.L.hook_resid_post; hidden_states[L+1])."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["h"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
