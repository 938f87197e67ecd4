"""The notebook API: the whole method in five calls, without Dagster.

    world = load_world()                      # model, tokenizer, SAE, probes (the demo if no config)
    probes = measure_probes(world)            # features + behaviour + refused labels
    policy = fit_policy(world, probes)        # the symbolic policy and its fit report
    shifts = measure_shifts(world, policy, pairs)
    attr = attribute(world, policy, probes, shifts)

Each step is one call into the module that owns it; the Dagster assets call the same ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from smda_core import inputs
from smda_core.config import SMDAConfig, load_config
from smda_core.errors import SMDAError
from smda_core.policy.labels import FeatureLabel, auto_labels, merge_labels
from smda_core.policy.fit import Policy, PolicySettings, fit_policy_arrays
from smda_core.policy.formula import render_formula

log = logging.getLogger(__name__)


@dataclass
class World:
    """Everything loaded once: model, tokenizer, SAE, hook point, probes and openings."""

    config: SMDAConfig
    model: Any
    tokenizer: Any
    sae: Any
    hook_layer: int
    probes: pa.Table
    encoded: list  # EncodedPrompt per probe
    refusal_openings: tuple[tuple[int, ...], ...]
    compliance_openings: tuple[tuple[int, ...], ...]
    sft_files: list[Path]
    model_name: str
    sae_name: str

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.hook_layer}.hook_resid_post"


@dataclass
class ProbeScores:
    """The base model on the probes: sparse features (COO), behaviour y, refusal_prob, refused."""

    probe_ids: np.ndarray
    category: np.ndarray
    harmful: np.ndarray
    refused: np.ndarray
    refused_source: str  # 'file' or 'greedy'
    behaviour: np.ndarray
    refusal_prob: np.ndarray
    coo_probe: np.ndarray
    coo_feature: np.ndarray
    coo_value: np.ndarray
    extra: dict = field(default_factory=dict)


def _resolve(config: SMDAConfig | str | Path | None) -> SMDAConfig:
    if config is None or isinstance(config, (str, Path)):
        return load_config(config)
    return config


def _sft_sources(config: SMDAConfig, default_folder: Path | None = None) -> dict[str, Any]:
    """SFT files: the configured ones plus the watched folder's (the demo's SFT folder unless files are named)."""
    from smda_core.inputs.batches import folder_files

    folder = config.watch.folder or (str(default_folder) if default_folder else None)
    files = [*(config.data.sft or ()), *(str(p) for p in folder_files(folder, config.watch.patterns))]
    return {"sft": list(dict.fromkeys(files)), "sft_folder": folder}


def world_sources(config: SMDAConfig, *, progress: bool = True) -> dict[str, Any]:
    """Paths and settings of the world: the demo's (built if not cached) or the config's."""
    if config.is_demo:
        from smda_core.worlds.demo.build import ensure_demo_world

        paths = ensure_demo_world(config.demo, progress=progress)
        meta = json.loads(paths.world.read_text())
        own_sae = {k: v for k, v in config.sae.model_dump().items() if v is not None}  # the demo model with your SAE
        return {"model": str(paths.model), "sae": own_sae or {"path": str(paths.sae)}, "hook_layer": meta["hook_layer"],
                "refusal_openings": tuple(meta["refusal_openings"]), "compliance_openings": tuple(meta["compliance_openings"]),
                "probes": config.data.probes or str(paths.probes),
                **_sft_sources(config, default_folder=None if config.data.sft else paths.sft_dir),
                "model_name": f"smda-demo:{paths.root.name}",
                "sae_name": config.sae.path or (f"{config.sae.release}/{config.sae.sae_id}" if config.sae.release
                                                else f"smda-demo-sae:{paths.root.name}")}
    if config.behaviour.refusal_openings is None:
        raise SMDAError("behaviour.refusal_openings must be set for a non-demo model (token sequences of its tokenizer)")
    if config.data.probes is None:
        raise SMDAError("data.probes must name a probe file for a non-demo model")
    sae = config.sae.model_dump()
    return {"model": config.model.path, "sae": {k: v for k, v in sae.items() if v is not None}, "hook_layer": config.model.hook_layer,
            "refusal_openings": tuple(config.behaviour.refusal_openings),
            "compliance_openings": tuple(config.behaviour.compliance_openings or ()),
            "probes": config.data.probes, **_sft_sources(config),
            "model_name": config.model.path, "sae_name": config.sae.path or f"{config.sae.release}/{config.sae.sae_id}"}


def load_world(config: SMDAConfig | str | Path | None = None, *, progress: bool = True) -> World:
    """Load model, tokenizer and SAE, check they fit, read and encode the probes."""
    from smda_core.model.chat import encode_openings, encode_prompt
    from smda_core.model.runtime import check_compatible, hook_layer_from_sae, load_model, load_sae

    config = _resolve(config)
    src = world_sources(config, progress=progress)
    model, tokenizer = load_model(src["model"], dtype=config.model.dtype, device=config.model.device,
                                  trust_remote_code=config.model.trust_remote_code)
    sae = load_sae(**src["sae"], device=config.model.device)
    layer = config.model.hook_layer if config.model.hook_layer is not None else src["hook_layer"]
    if layer is None:
        layer = hook_layer_from_sae(sae)
    if layer is None:
        raise SMDAError("model.hook_layer is not set and the SAE's metadata names no blocks.L.hook_resid_post")
    check_compatible(model, sae, layer)
    probes = inputs.read_probes(src["probes"])
    encoded = [encode_prompt(tokenizer, p, name=f"{src['probes']} probe {pid}", max_tokens=config.features.max_prompt_tokens)
               for pid, p in zip(probes["probe_id"].to_pylist(), probes["prompt"].to_pylist())]
    refusal = config.behaviour.refusal_openings or src["refusal_openings"]
    # Compliance openings cost extra teacher-forcing branches: only the `contrast` behaviour reads them.
    compliance = (config.behaviour.compliance_openings or src["compliance_openings"]) if config.behaviour.kind == "contrast" else ()
    return World(config, model, tokenizer, sae, int(layer), probes, encoded, encode_openings(tokenizer, tuple(refusal)),
                 encode_openings(tokenizer, tuple(compliance), what="compliance_openings") if compliance else (),
                 [Path(p) for p in src["sft"]], src["model_name"], src["sae_name"])


def measure_probes(world: World, *, progress: bool = True) -> ProbeScores:
    """Features at the configured position and behaviour, from one pass; `refused` by greedy decoding if absent."""
    from smda_core.model.runtime import behaviour_from_logp, greedy_refused, read_probes

    cfg = world.config
    openings = list(world.refusal_openings) + list(world.compliance_openings)
    r = read_probes(world.model, world.sae, world.hook_layer, world.encoded, openings, position=cfg.features.position,
                    batch_size=cfg.features.batch_size, pad_id=world.tokenizer.pad_token_id,
                    padding_side=cfg.features.padding_side, progress=progress)
    n_ref = len(world.refusal_openings)
    y, prob = behaviour_from_logp(r.logp_openings[:, :n_ref], cfg.behaviour.kind,
                                  r.logp_openings[:, n_ref:] if world.compliance_openings else None)
    given = world.probes["refused"].to_pylist()
    if all(v is not None for v in given):
        refused, source = np.asarray(given, dtype=bool), "file"
    else:
        greedy = greedy_refused(world.model, world.encoded, world.refusal_openings, n_tokens=cfg.behaviour.greedy_tokens,
                                batch_size=cfg.features.batch_size, pad_id=world.tokenizer.pad_token_id, progress=progress)
        refused = np.array([g if v is None else v for v, g in zip(given, greedy)], dtype=bool)
        source = "greedy"
    return ProbeScores(np.asarray(world.probes["probe_id"].to_pylist()), np.asarray(world.probes["category"].to_pylist()),
                       np.asarray(world.probes["harmful"].to_pylist(), dtype=bool), refused, source, y, prob,
                       r.coo_probe, r.coo_feature, r.coo_value)


def policy_settings(config: SMDAConfig) -> PolicySettings:
    p = config.policy
    return PolicySettings(selection=p.selection, contrast_threshold=p.contrast_threshold, max_features=p.max_features,
                          correlation_k=p.correlation_k, min_active=p.min_active, features=p.features, design=p.design,
                          intercept=p.intercept, lam=p.lam, lam_grid=p.lam_grid, heldout_fraction=p.heldout_fraction, seed=p.seed)


def fit_policy(world: World, probes: ProbeScores) -> Policy:
    """The symbolic policy over the probes' features (DESIGN §3)."""
    return fit_policy_arrays(probes.coo_probe, probes.coo_feature, probes.coo_value, len(probes.probe_ids),
                             harmful=probes.harmful, y=probes.behaviour, refused=probes.refused, category=probes.category,
                             settings=policy_settings(world.config))


def feature_labels(world: World, policy: Policy) -> list[FeatureLabel]:
    """Automatic labels from the probes, overridden by an imported export when configured."""
    auto = auto_labels(policy.X, policy.feature_ids, world.probes["prompt"].to_pylist(), world.probes["category"].to_pylist())
    imported = inputs.read_feature_labels(world.config.policy.labels_path) if world.config.policy.labels_path else None
    return merge_labels(auto, imported)


def formula(world: World, policy: Policy, labels: list[FeatureLabel] | None = None, top: int | None = 8) -> str:
    labels = labels if labels is not None else feature_labels(world, policy)
    name = "refusal" if world.config.behaviour.kind != "contrast" else "refusal − compliance"
    return render_formula(policy, {l.feature_id: l.label for l in labels}, behaviour_name=name, top=top)


def read_pairs(world: World, path: str | Path | None = None) -> pa.Table:
    """SFT pairs of one file (default: every configured file, concatenated), checked against the probes."""
    files = [Path(path)] if path is not None else world.sft_files
    if not files:
        raise SMDAError("no SFT files configured (data.sft)")
    tables = [inputs.read_sft_pairs(f) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    inputs.check_overlap(world.probes, table, allow=world.config.data.allow_probe_overlap)
    return table


def shift_settings(config: SMDAConfig):
    from smda_core.model.shifts import ShiftSettings

    s = config.shifts
    return ShiftSettings(optimizer=s.optimizer, lr=s.lr, steps=s.steps, weight_decay=s.weight_decay, dtype=s.dtype,
                         batch_size=s.batch_size)


def measure_shifts(world: World, policy: Policy, pairs: pa.Table, *, settings=None, progress: bool = True):
    """ΔX, ΔY, ΔP of every pair over every probe (DESIGN §4 "Shift")."""
    from smda_core.model.shifts import ProbeSetup, measure_pair_shifts

    cfg = world.config
    setup = ProbeSetup(world.encoded, world.refusal_openings, world.compliance_openings, cfg.behaviour.kind,
                       cfg.features.position, world.hook_layer, world.tokenizer.pad_token_id)
    rows = list(zip(pairs["pair_id"].to_pylist(), pairs["prompt"].to_pylist(), pairs["response"].to_pylist()))
    return measure_pair_shifts(world.model, world.tokenizer, world.sae, setup, policy.feature_ids, rows,
                               settings or shift_settings(cfg), progress=progress)


def attribute(world: World, policy: Policy, probes: ProbeScores, shifts, pairs: pa.Table | None = None):
    """Δβ by pathway under each configured method, scores and interference (DESIGN §4)."""
    from smda_core.attribution.scores import attribute_pairs

    cfg = world.config
    intended = None
    if pairs is not None and "intended_features" in pairs.column_names:
        intended = [json.loads(v) if v else None for v in pairs["intended_features"].to_pylist()]
    return attribute_pairs(policy, shifts.pair_ids, shifts.dX(cfg.shifts.delta_x), shifts.dY, shifts.dP,
                           pair_prompt_X=shifts.prompt_X, probe_harmful=probes.harmful, probe_category=probes.category,
                           active_flips=shifts.active_flips, intended=intended, intended_top=cfg.attribution.intended_top,
                           methods=cfg.attribution.methods, primary=cfg.attribution.primary)
