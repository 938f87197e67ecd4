"""Where a config's inputs live: model and SAE, hook point, openings, probe file, SFT files (no torch).

Batches, input versions, the Dagster assets and the model runtime all start from here, so a
step that only needs paths (a batch id, a content hash) never loads a model. For the embedded
demo the world is built first when it is not cached.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smda_core.config import SMDAConfig
from smda_core.errors import SMDAError


@dataclass(frozen=True)
class Sources:
    """The files and settings a run reads, resolved from one config."""

    model: str
    sae: dict[str, Any]  # load_sae keywords: path, or release + sae_id
    hook_layer: int | None  # None: from the SAE's metadata
    refusal_openings: tuple[str, ...]
    compliance_openings: tuple[str, ...]
    probes: str
    sft: tuple[str, ...]
    sft_folder: str | None
    model_name: str
    sae_name: str


def folder_files(folder: str | Path | None, patterns: Iterable[str]) -> list[Path]:
    """Files of the watched folder matching the patterns (not recursive; hidden and partial files skipped)."""
    if folder is None or not Path(folder).is_dir():
        return []
    found = {p for pattern in patterns for p in Path(folder).glob(pattern)
             if p.is_file() and not p.name.startswith((".", "~")) and not p.name.endswith((".tmp", ".part"))}
    return sorted(found)


def _sft_files(config: SMDAConfig, default_folder: Path | None = None) -> tuple[tuple[str, ...], str | None]:
    """The configured SFT files plus the watched folder's (the demo's SFT folder unless `data.sft` is set).

    Settings that are left out take the world's value; settings given, even empty (`sft: []`), are
    used as given: an empty list is never silently replaced.
    """
    folder = config.watch.folder or (str(default_folder) if default_folder else None)
    files = [*(config.data.sft or ()), *(str(p) for p in folder_files(folder, config.watch.patterns))]
    return tuple(dict.fromkeys(files)), folder


def _sae_spec(config: SMDAConfig) -> dict[str, Any]:
    return {k: v for k, v in config.sae.model_dump().items() if v is not None}


def resolve_sources(config: SMDAConfig, *, progress: bool = True) -> Sources:
    """Paths and settings of the world: the demo's (built if not cached) or the config's."""
    if config.is_demo:
        return _demo_sources(config, progress=progress)
    if config.behaviour.refusal_openings is None:
        raise SMDAError("behaviour.refusal_openings must be set for a non-demo model (token sequences of its tokenizer)")
    if config.data.probes is None:
        raise SMDAError("data.probes must name a probe file for a non-demo model")
    sft, folder = _sft_files(config)
    return Sources(model=config.model.path, sae=_sae_spec(config), hook_layer=config.model.hook_layer,
                   refusal_openings=tuple(config.behaviour.refusal_openings),
                   compliance_openings=tuple(config.behaviour.compliance_openings or ()), probes=config.data.probes,
                   sft=sft, sft_folder=folder, model_name=config.model.path,
                   sae_name=config.sae.path or f"{config.sae.release}/{config.sae.sae_id}")


def _given(value, default):
    """The configured value unless the key was left out (None): never `or`, which replaces an empty list."""
    return default if value is None else value


def _demo_sources(config: SMDAConfig, *, progress: bool) -> Sources:
    """The demo world's files; the user's own SAE, probes or SFT files replace the demo's where given."""
    from smda_core.worlds.demo.build import ensure_demo_world

    paths = ensure_demo_world(config.demo, progress=progress)
    meta = json.loads(paths.world.read_text())
    sft, folder = _sft_files(config, default_folder=None if config.data.sft is not None else paths.sft_dir)
    own_sae = _sae_spec(config)
    return Sources(model=str(paths.model), sae=own_sae or {"path": str(paths.sae)},
                   hook_layer=config.model.hook_layer if config.model.hook_layer is not None else meta["hook_layer"],
                   refusal_openings=tuple(_given(config.behaviour.refusal_openings, meta["refusal_openings"])),
                   compliance_openings=tuple(_given(config.behaviour.compliance_openings, meta["compliance_openings"])),
                   probes=_given(config.data.probes, str(paths.probes)), sft=sft, sft_folder=folder,
                   model_name=f"smda-demo:{paths.root.name}",
                   sae_name=config.sae.path or (f"{config.sae.release}/{config.sae.sae_id}" if config.sae.release
                                                else f"smda-demo-sae:{paths.root.name}"))
