"""The notebook API: the whole method in a few calls, without Dagster.

    config = load_config()                          # the embedded demo if no file
    runtime = load_runtime(config)                  # model, tokenizer, SAE, tokenised probes
    probes = measure_probes(runtime)                # features + behaviour + refused labels (arrays)
    policy = fit_policy(probes, config.policy)      # the symbolic policy and its fit report (numpy)
    pairs = read_pairs(runtime.sources, runtime.probes, config)
    shifts = measure_shifts(runtime, policy, pairs) # ΔX, ΔY per pair (runs the model)
    attr = attribute(policy, probes, shifts, pairs, config)   # Δβ, scores, interference (numpy)

Only `load_runtime`, `measure_probes` and `measure_shifts` run the model; the other steps take
arrays and settings. The Dagster assets call the same functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from smda_core import inputs
from smda_core.config import SMDAConfig, load_config
from smda_core.errors import SMDAError
from smda_core.inputs.pairs import pair_rows
from smda_core.model.measurements import GradientShifts, PairShifts, ProbeScores
from smda_core.policy.fit import Policy, fit_policy
from smda_core.policy.formula import render_formula
from smda_core.policy.labels import FeatureLabel, auto_labels, merge_labels
from smda_core.sources import Sources, resolve_sources

__all__ = ["load_config", "resolve_sources", "load_runtime", "measure_probes", "fit_policy", "feature_labels", "formula",
           "read_pairs", "measure_shifts", "gradient_shifts", "screen_pairs", "attribute", "train_sae"]


def load_runtime(config: SMDAConfig | str | Path | None = None, *, progress: bool = True):
    """The model runtime of a config (a path, a loaded config, or None for the demo)."""
    from smda_core.runtime import load_runtime as _load

    return _load(config if isinstance(config, SMDAConfig) else load_config(config), progress=progress)


def measure_probes(runtime, *, progress: bool = True) -> ProbeScores:
    """One pass over the probes: SAE features at the configured position, behaviour, refused labels."""
    from smda_core.runtime import measure_probes as _measure

    return _measure(runtime, progress=progress)


def feature_labels(policy: Policy, probes: pa.Table, labels_path: str | None = None) -> list[FeatureLabel]:
    """Automatic labels from the probes' texts, overridden by an imported export when one is given."""
    auto = auto_labels(policy.X, policy.feature_ids, probes["prompt"].to_pylist(), probes["category"].to_pylist())
    return merge_labels(auto, inputs.read_feature_labels(labels_path) if labels_path else None)


def formula(policy: Policy, labels: list[FeatureLabel], behaviour_kind: str, top: int | None = 8) -> str:
    """The policy as a formula over labelled features."""
    name = "refusal" if behaviour_kind != "contrast" else "refusal − compliance"
    return render_formula(policy, {label.feature_id: label.label for label in labels}, behaviour_name=name, top=top)


def read_pairs(sources: Sources, probes: pa.Table, config: SMDAConfig, path: str | Path | None = None) -> pa.Table:
    """SFT pairs of one file (default: every configured file, concatenated), checked against the probes."""
    files = [Path(path)] if path is not None else [Path(p) for p in sources.sft]
    if not files:
        raise SMDAError("no SFT files configured (data.sft)")
    tables = [inputs.read_sft_pairs(f) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    inputs.check_overlap(probes, table, allow=config.data.allow_probe_overlap)
    return table


def measure_shifts(runtime, policy: Policy, pairs: pa.Table, *, settings=None, progress: bool = True) -> PairShifts:
    """ΔX, ΔY, ΔP of every pair over every probe (DESIGN §4 "Shift")."""
    from smda_core.model.shifts import measure_pair_shifts

    return measure_pair_shifts(runtime.model, runtime.tokenizer, runtime.sae, runtime.probe_setup(), policy.feature_ids,
                               pair_rows(pairs), settings or runtime.config.shifts, progress=progress)


def gradient_shifts(runtime, policy: Policy, pairs: pa.Table, *, settings=None, gradient=None, progress: bool = True,
                    probe_grads=None):
    """The gradient tier (DESIGN §4 "Three tiers"): first-order ΔY, ΔP per probe and the ΔX pathway of Δβ per pair.

    Returns (GradientShifts, G); pass G back as `probe_grads` to score more pairs against the same policy."""
    from smda_core.model.gradients import measure_gradient_shifts

    cfg = runtime.config
    return measure_gradient_shifts(runtime.model, runtime.tokenizer, runtime.sae, runtime.probe_setup(), policy.feature_ids,
                                   gradient_functionals(policy), pair_rows(pairs), settings or cfg.shifts, gradient or cfg.gradient,
                                   progress=progress, probe_grads=probe_grads)


def gradient_functionals(policy: Policy) -> np.ndarray:
    """(F, n, k): the fixed linear functionals of the raw activation shifts behind Δβ's ΔX pathway, which the
    gradient tier differentiates once (G) instead of measuring ΔX per pair."""
    from smda_core.attribution.pathways import via_x_weights

    scale = np.diag(policy.shift(np.eye(policy.k)))  # ΔZ = ΔX · scale (per feature)
    return via_x_weights(policy.Z, policy.fit) * scale[None, None, :]


def screen_pairs(runtime, policy: Policy, pairs: pa.Table):
    """The screen tier: one forward pass over each pair's prompt; the policy read on it (DESIGN §4 "Three tiers")."""
    from smda_core.model.gradients import screen_pairs as _screen

    return _screen(runtime.model, runtime.tokenizer, runtime.sae, runtime.probe_setup(), policy.feature_ids, pair_rows(pairs),
                   batch_size=runtime.config.shifts.batch_size)


def attribute(policy: Policy, probes: ProbeScores, shifts: PairShifts | GradientShifts, pairs: pa.Table | None,
              config: SMDAConfig):
    """Δβ by pathway under each configured method, the kind-free scores, mechanism and interference (DESIGN §4).

    Shifts of the gradient tier (`GradientShifts`) give one method, `gradient` (first order, see
    `attribute_first_order`), and the same scores from their per-probe Δℓ."""
    import dataclasses

    import numpy as np

    from smda_core.attribution.scores import attribute_first_order, attribute_pairs

    intended = None
    if pairs is not None and "intended_features" in pairs.column_names:
        intended = [json.loads(v) if v else None for v in pairs["intended_features"].to_pylist()]
    a = config.attribution
    if isinstance(shifts, GradientShifts):
        attr = attribute_first_order(policy, shifts.pair_ids, shifts.via_x, shifts.dY, shifts.dP,
                                     pair_prompt_X=shifts.prompt_X, probe_harmful=probes.harmful,
                                     probe_category=probes.category, intended=intended, intended_top=a.intended_top,
                                     method=shifts.method)
        m, n = shifts.dY.shape
        scored = _score(policy, probes, shifts, np.broadcast_to(np.zeros(1), (m, n, policy.k)), a.score)
        return dataclasses.replace(attr, pair_summary={**attr.pair_summary, **scored.summary},
                                   pair_mechanism=scored.first_order(),
                                   completeness={k: v for k, v in scored.completeness.items()
                                                 if k.endswith("/effect-fit") or k == "keep_score"})
    attr = attribute_pairs(policy, shifts.pair_ids, shifts.dX(config.shifts.delta_x), shifts.dY, shifts.dP,
                           pair_prompt_X=shifts.prompt_X, probe_harmful=probes.harmful, probe_category=probes.category,
                           active_flips=shifts.active_flips, intended=intended, intended_top=a.intended_top,
                           methods=a.methods, primary=a.primary)
    if shifts.response_refuses is None or shifts.prompt_coo is None:
        return attr  # shifts measured before the log-odds scores existed
    scored = _score(policy, probes, shifts, policy.shift(shifts.dX(config.shifts.delta_x)), a.score)
    return dataclasses.replace(attr, pair_summary={**attr.pair_summary, **scored.summary},
                               pair_mechanism=scored.mechanism, completeness=scored.completeness)


def _score(policy: Policy, probes: ProbeScores, shifts, dZ, recommended: str):
    """The kind-free scores of measured or first-order shifts: SAE features of the pairs' prompts and of the probes
    (read position, and each feature's maximum over the request for the effect fit) made dense."""
    from smda_core.attribution.pair_scores import dense_features, score_pairs

    m, n = shifts.dY.shape
    maxima = probes.maxima[:3] if probes.maxima is not None else None
    width = int(max(probes.coo_feature.max(initial=-1), shifts.prompt_coo[1].max(initial=-1),
                    maxima[1].max(initial=-1) if maxima is not None else -1)) + 1
    return score_pairs(policy, np.asarray(shifts.pair_ids), dZ, shifts.p_base, shifts.dP, shifts.response_refuses,
                       shifts.prompt_X, dense_features(shifts.prompt_coo, m, width),
                       dense_features((probes.coo_probe, probes.coo_feature, probes.coo_value), n, width),
                       probes.harmful, probes.category, recommended=recommended,
                       effect_features=dense_features(maxima, n, width) if maxima is not None else None)


def train_sae(cfg: SMDAConfig, *, progress: bool = True) -> tuple[Path, dict]:
    """`smda sae train`: the config's model (or the demo's) and `sae_training` section."""
    from smda_core.errors import SMDAError

    st = cfg.sae_training
    layer = st.hook_layer if st.hook_layer is not None else cfg.model.hook_layer
    if cfg.is_demo:
        src = resolve_sources(cfg, progress=progress)
        model_path = src.model
        files = list(st.corpus) or [*src.sft, src.probes]
        layer = src.hook_layer if layer is None else layer
    else:
        model_path = cfg.model.path
        files = list(st.corpus)
        if not files:
            raise SMDAError("sae_training.corpus must name at least one JSONL file for a non-demo model")
    from smda_core.model.loading import decoder_layers, load_model
    from smda_core.model.sae_training import read_corpus, train_sae_on_model

    model, tokenizer = load_model(str(model_path), dtype="float32", device=cfg.model.device,
                                  trust_remote_code=cfg.model.trust_remote_code)
    n_layers = len(decoder_layers(model))
    layer = n_layers // 2 if layer is None else layer
    if not 0 <= layer < n_layers:
        raise SMDAError(f"sae_training.hook_layer={layer} is out of range: the model has {n_layers} blocks")
    spec = st.replace(hook_layer=layer)
    return train_sae_on_model(model_path, read_corpus(files), spec, st.cache_dir, model=model, tokenizer=tokenizer,
                              progress=progress)
