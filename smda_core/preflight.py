"""A config checked against the world before any run starts or any model loads: every problem at once.

`load_config` checks the schema (keys, types, allowed values). This checks what the schema cannot: that
the files and folders the config names exist (relative paths are read from the working directory), that
the probe file reads (its errors name the line and field), that an SAE is named completely, and, for a
model on disk, that its tokenizer reads the openings as token sequences of one length, that the hook layer
is one of its blocks and that the SAE reads its hidden size. Only the tokenizer and the model's config
file are read, never weights, so a bad config fails in seconds with one message that names every key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smda_core.config import SMDAConfig
from smda_core.errors import ConfigError, SMDAError


def check_config(config: SMDAConfig, *, source: str = "config") -> None:
    """Raise one ConfigError naming every problem of `config` (key: what is wrong; what to do), or return."""
    problems = _files(config)
    if not config.is_demo:
        if config.behaviour.refusal_openings is None:
            problems.append("'behaviour.refusal_openings': must be set for your own model: the texts it begins a "
                            "refusal with, of one token length in its tokenizer (e.g. [\"I cannot\", \"I can't\"])")
        if config.data.probes is None:
            problems.append("'data.probes': name your probe file (JSONL, CSV or Parquet with prompt, category, harmful)")
    sae = config.sae
    if sae.path is None and (sae.release is None) != (sae.sae_id is None):
        problems.append("'sae': give both 'sae.release' and 'sae.sae_id' (a sae-lens pretrained SAE), or 'sae.path'")
    if not config.is_demo and sae.path is None and sae.release is None:
        problems.append("'sae': name the SAE: 'sae.path' (a sae-lens save_model folder) or 'sae.release' + 'sae.sae_id'")
    if not problems:
        problems += _model(config)
    if any(RELATIVE in p for p in problems):
        problems.append(f"relative paths are read from the working directory {os.getcwd()}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(p.replace(RELATIVE, "") for p in problems))


def check_same_world(stored: Mapping[str, Any] | None, model: str, sae: str, *, warehouse: str | Path) -> None:
    """Refuse a config whose model or SAE is not the one the warehouse's probes were read with (`stored`: its
    readout_info row; None: nothing read yet). An experiment reads the warehouse's pairs and scores and runs the
    config's model: with another world's config its rows would describe a model the warehouse's views do not."""
    if not stored:
        return
    differ = [f"{key} {stored[key]!r} there, {mine!r} in this config" for key, mine in (("model", model), ("sae", sae))
              if stored.get(key) and stored[key] != mine]
    if differ:
        raise ConfigError(f"{warehouse} was read with another model or SAE ({'; '.join(differ)}): pass the config it "
                          "was built with (--config), or materialise this config into its own warehouse")


RELATIVE = "\0relative"  # marks a missing relative path: the working directory is named once, at the end


def _files(config: SMDAConfig) -> list[str]:
    """Every file and folder the config names must exist; the probe file must read."""
    from smda_core import inputs
    from smda_core.errors import InputError

    wanted: list[tuple[str, str | None, str]] = [("data.probes", config.data.probes, "file"),
                                                 ("policy.labels_path", config.policy.labels_path, "file"),
                                                 ("watch.folder", config.watch.folder, "folder"),
                                                 ("sae.path", config.sae.path, "folder")]
    wanted += [(f"data.sft[{i}]", p, "file") for i, p in enumerate(config.data.sft or ())]
    wanted += [(f"data.metadata[{i}].path", m.path, "file") for i, m in enumerate(config.data.metadata)]
    if config.model.path is not None and _looks_local(config.model.path):
        wanted.append(("model.path", config.model.path, "folder"))
    problems = []
    for key, path, kind in wanted:
        if path is None:
            continue
        p = Path(path)
        if not p.exists():
            problems.append(f"'{key}': {path} does not exist" + ("" if p.is_absolute() else RELATIVE))
        elif kind == "folder" and not p.is_dir():
            problems.append(f"'{key}': {path} is not a folder")
        elif kind == "file" and not p.is_file():
            problems.append(f"'{key}': {path} is not a file")
        elif key == "sae.path" and not (p / "cfg.json").exists():
            problems.append(f"'sae.path': {path} has no cfg.json (expected the folder sae-lens save_model writes)")
        elif key == "data.probes":
            try:
                inputs.read_probes(p)
            except InputError as exc:
                problems.append(f"'data.probes': {exc}")
    return problems


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a Hub id (`org/name`, which is not downloaded here)."""
    return Path(path).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", path)


def _model(config: SMDAConfig) -> list[str]:
    """Checks that need the model's tokenizer and config file (read from disk; a Hub model is not downloaded)."""
    from smda_core.errors import InputError
    from smda_core.model.chat import encode_openings, load_tokenizer
    from smda_core.sources import resolve_sources

    try:
        src = resolve_sources(config, progress=False)
    except SMDAError as exc:
        return [str(exc)]
    if not Path(src.model).is_dir():
        return []
    try:
        tokenizer, model_config = load_tokenizer(src.model, trust_remote_code=config.model.trust_remote_code)
    except SMDAError as exc:
        return [f"'model.path': {exc}"]
    problems = []
    for key, openings in (("refusal_openings", src.refusal_openings),
                          ("compliance_openings", src.compliance_openings if config.behaviour.kind == "contrast" else None)):
        if openings is None:
            continue
        try:
            encode_openings(tokenizer, tuple(openings), what=key)
        except InputError as exc:
            problems.append(f"'behaviour.{key}': {str(exc).split(': ', 1)[-1]}")
    n_layers = getattr(model_config, "num_hidden_layers", None)
    if src.hook_layer is not None and isinstance(n_layers, int) and not 0 <= src.hook_layer < n_layers:
        problems.append(f"'model.hook_layer': {src.hook_layer} is not a block of this model: it has {n_layers} "
                        f"(0 … {n_layers - 1})")
    sae_cfg = Path(src.sae["path"]) / "cfg.json" if src.sae.get("path") else None
    hidden = getattr(model_config, "hidden_size", None)
    if sae_cfg is not None and sae_cfg.exists() and isinstance(hidden, int):
        d_in = json.loads(sae_cfg.read_text()).get("d_in")
        if d_in is not None and int(d_in) != hidden:
            problems.append(f"'sae.path': the SAE reads vectors of {d_in} numbers and the model's hidden size is "
                            f"{hidden}: an SAE trained on another model")
    return problems
