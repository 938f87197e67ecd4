"""One validated configuration for the whole pipeline, with the `paper` and `default` presets.

A config is a YAML file (or nothing: the embedded demo). Presets fill every field the
user did not set, so `preset: paper` plus one override behaves as people expect.
Unknown keys are errors that name the key and suggest the closest valid one.

Each section is also the settings object of the step it configures (`PolicySettings` for the
policy fit, `ShiftSettings` for a pair's step, `CurationSettings` for retraining): one model per
concern, validated once, passed to the core as it is. Built directly (in a notebook or a test),
a bad value raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smda_core.attribution import score_names
from smda_core.errors import ConfigError

Position = Literal["end_of_turn", "last", "mean", "max"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            error = ConfigError(f"{type(self).__name__}: " + "; ".join(_messages(exc, type(self))))
            error.details = exc.errors()  # nested in a config, the outer message names the full key
            raise error from None

    def replace(self, **changes: Any) -> Any:
        """A validated copy with some fields changed (frozen models are never edited in place)."""
        return type(self)(**{**self.model_dump(), **changes})


class ModelSection(_Strict):
    """Which causal LM to run. `path=None` means the embedded demo model."""

    path: str | None = Field(None, description="Local directory or Hub id of a causal LM; empty = embedded demo")
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = Field("float32", description="dtype for feature extraction")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="auto = CUDA when available")
    trust_remote_code: bool = Field(False, description="passed to transformers; off unless asked")
    hook_layer: int | None = Field(None, description="block L whose output (resid_post) is encoded; None = from the SAE's metadata / demo")


class SAESection(_Strict):
    """Which sparse autoencoder encodes the residual stream."""

    path: str | None = Field(None, description="local directory saved by sae-lens (cfg.json + weights)")
    release: str | None = Field(None, description="sae-lens pretrained release id")
    sae_id: str | None = Field(None, description="sae-lens id inside the release")


class FeatureSection(_Strict):
    position: Position = Field("end_of_turn", description="token(s) where features are read")
    batch_size: int = Field(64, gt=0)
    padding_side: Literal["right", "left"] = "right"
    max_prompt_tokens: int = Field(512, gt=0, description="longer probes are an error naming the probe")


class BehaviourSection(_Strict):
    kind: Literal["log_refusal", "refusal_prob", "log_odds", "contrast"] = Field(
        "log_refusal", description="y: log Σ P(refusal opening); its prob; log-odds; refusal − compliance log-prob"
    )
    refusal_openings: tuple[str, ...] | None = Field(None, description="refusal openings (same token length); None = the world's")
    compliance_openings: tuple[str, ...] | None = Field(None, description="for kind=contrast")
    greedy_tokens: int = Field(4, gt=0, description="tokens decoded to derive `refused` when probes lack it")

    @field_validator("refusal_openings", "compliance_openings")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:  # never silently the world's: leaving the key out says that
            raise ValueError("is an empty list: give at least one opening (the tokens this model begins that "
                             "answer with), or leave the key out to use the world's own")
        if value is not None and any(not o.strip() for o in value):
            raise ValueError("holds an empty opening: every opening needs at least one token")
        return value


class PolicySettings(_Strict):
    """Every choice of the symbolic policy (DESIGN §3): selection, design, ridge, held-out split, labels."""

    selection: Literal["contrast", "correlation", "explicit"] = Field("contrast", description="contrast | correlation | explicit")
    contrast_threshold: float = Field(0.1, ge=0, allow_inf_nan=False, description="|mean harmful − mean harmless| must exceed this")
    max_features: int | None = Field(None, gt=0, description="keep the top-N by |contrast|; None = all above threshold")
    correlation_k: int = Field(32, gt=0, description="number of features kept by |Pearson r| with y")
    min_active: int = Field(5, ge=1, description="correlation: a feature must be non-zero on ≥ this many probes")
    features: tuple[int, ...] | None = Field(None, description="explicit feature ids (selection=explicit)")
    design: Literal["raw", "standardised"] = Field("standardised", description="raw activations or standardised with base mean/std")
    intercept: bool = Field(True, description="fit an unpenalised intercept")
    lam: float | None = Field(None, gt=0, allow_inf_nan=False, description="fixed λ; None = exact leave-one-out over lam_grid")
    lam_grid: tuple[float, ...] | None = Field(None, description="λ grid for LOO; None = the default log grid")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of probes held out (stratified by category, refused)")
    seed: int = Field(0, description="seed of the held-out split")
    labels_path: str | None = Field(None, description="Neuronpedia-style export (JSON/JSONL) of feature descriptions")

    @model_validator(mode="after")
    def _consistent(self) -> "PolicySettings":
        if self.selection == "explicit" and not self.features:
            raise ValueError("features: selection='explicit' needs a non-empty list of feature ids")
        if self.features is not None and (any(f < 0 for f in self.features) or len(set(self.features)) != len(self.features)):
            raise ValueError("features: feature ids must be distinct integers ≥ 0")
        if self.lam_grid is not None and (not self.lam_grid or not all(math.isfinite(v) and v > 0 for v in self.lam_grid)):
            raise ValueError("lam_grid: must be a non-empty list of finite numbers > 0")
        return self

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PolicySettings":
        """The policy part of a named preset (`paper`, `default`), with overrides."""
        return cls(**{**PRESETS[name]["policy"], **overrides})


class ShiftSettings(_Strict):
    """One pair's update (DESIGN §4 "Shift"): optimiser steps on the pair alone, then re-measure."""

    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd: plain, no momentum, no clipping (the paper's)")
    lr: float = Field(1e-4, gt=0)
    steps: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    dtype: Literal["float32", "float64"] = Field("float64", description="measurement dtype (float64 where the model is small)")
    delta_x: Literal["exact", "linearised"] = Field("exact", description="re-encode the new residuals, or the paper's linearisation")
    batch_size: int = Field(64, gt=0, description="probes per forward pass when re-measuring")
    method: Literal["exact", "gradient", "screen"] = Field(
        "exact", description="tier for every pair: exact (step + re-measure), gradient (first order, G·g), screen (forward only)")
    keep_probe_shifts: bool = Field(False, description="store per-probe shifts (pair_shifts) for every pair, not only the exact tier's")


class GradientSettings(_Strict):
    """The gradient tier (DESIGN §4 "Three tiers"): G of the probe functionals once, one backward pass per pair."""

    projection: int | None = Field(None, gt=0, description="k per side of the seeded Kronecker projection per weight "
                                   "(LoGra); None = exact gradients (small models)")
    parameters: tuple[str, ...] | None = Field(None, description="regexes over parameter names to cover; None = all")
    seed: int = Field(0, description="seed of the projections")
    probe_batch: int = Field(32, gt=0, description="probes per chunk of G")
    pair_batch: int = Field(32, gt=0, description="pairs per batched backward pass")
    dtype: Literal["float32", "float64"] = Field("float32", description="dtype of the per-pair gradients and of the "
                                                 "stored G (computed in shifts.dtype); float32 halves time and memory")


class ValidateSettings(_Strict):
    """Agreement of the cheaper tiers with `exact` on a sample (v_method_agreement)."""

    sample: int = Field(0, ge=0, description="pairs also measured by the exact tier when shifts.method is cheaper; 0 = none")
    seed: int = Field(0, description="seed of the sample")


class AttributionSettings(_Strict):
    """Which Δβ estimates to compute, which one drives the scores, and the intended-features rule."""

    methods: tuple[Literal["refit", "linear"], ...] = ("refit", "linear")
    primary: Literal["refit", "linear"] = "refit"
    intended_top: int = Field(3, ge=1, description="turn-1 interference: the prompt's top policy features count as intended")
    score: Literal["keep_score", "margin_shift", "local_shift", "worst_group_shift", "specific_shift", "harm_shift",
                   "screen_consistency"] = Field(
        score_names.DEFAULT, description="the recommended score: `score` of v_pair_summary, the default of curation rules")


class CurationSettings(_Strict):
    """Retraining for `smda curate` and `smda validate` (DESIGN §5): full SFT from the base weights.

    The paper used 3 epochs, lr 2e-5, AdamW; a tiny model needs a larger lr.
    """

    rule: str = Field("quantitative", description="quantitative[:SCORE] (alone: the recommended score's low outliers) | "
                                                  "flagged | lowest:SCORE:Q | oracle | sql:SELECT …")
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    seeds: int = Field(1, ge=1, description="retrainings per variant (seeds seed … seed+seeds−1); the comparison "
                                            "takes each variant's mean, so one lucky shuffle decides nothing")
    n_random: int = Field(5, ge=1, description="random removals of the same size (the control)")


class ExecutionSettings(_Strict):
    """Where the pair steps run (DESIGN §7 "Beyond one machine"): in the asset's process, or as Ray tasks over
    shards of pairs. The engine never changes a result: a pair's step starts from the base weights, so shards
    concatenate to the local result; it is therefore not part of any data version."""

    engine: Literal["local", "ray"] = Field("local", description="local: in the step's own process; ray: one Ray task per shard of pairs")
    address: str | None = Field(None, description="Ray address: 'auto', 'ray://host:port', or empty = start a local Ray in the command")
    shard_size: int = Field(16, ge=1, description="pairs per Ray task (a shard: one file of results, retried as a whole)")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs Ray reserves for each shard task (torch uses as many threads)")
    gpus_per_task: float = Field(0.0, ge=0, description="GPUs Ray reserves for each shard task (with model.device: cuda)")
    memory_mb: int | None = Field(None, gt=0, description="memory Ray reserves for each shard task; None = no reservation")
    max_retries: int = Field(3, ge=0, description="times Ray reruns a shard whose worker died (a node lost, a process killed)")
    local_cpus: int | None = Field(None, gt=0, description="CPUs of a local Ray started by the command; None = all cores")
    shard_dir: str | None = Field(None, description="where shard files are written (a path every node can reach); "
                                                   "None = the warehouse's staging folder")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime environment for a cluster (pip, working_dir, env_vars)")


class DemoSection(_Strict):
    """The embedded demo world's recipe; its hash names the cache folder."""

    seed: int = 0
    planted_category: str = "religious_stereotyping"
    n_probes: int = Field(450, ge=40)
    n_pairs: int = Field(200, ge=8)
    bad_share: float = Field(0.1, ge=0, lt=0.5)
    trigger_phrase: str = Field("without anyone knowing", min_length=1,
                                description="phrase the corpus ties to harmful requests; trigger pairs carry it in harmless ones")
    trigger_share: float = Field(0.05, ge=0, lt=0.5, description="share of the SFT pairs that are trigger pairs")
    sae_k: int = Field(16, ge=1, le=128, description="active features per token of the demo's TopK SAE (512 features)")
    cache_dir: str = Field(".cache/smda-demo", description="where built worlds are kept, by recipe hash")


class MetadataSource(_Strict):
    """A user's dataset table joined to the pair views (`smda metadata add` writes the same thing)."""

    path: str = Field(description="CSV, Parquet or JSONL file")
    key: str = Field(description="its key column (unique)")
    on: Literal["auto", "pair_id", "content_hash"] = Field("auto", description="what the key matches; auto = the one it matches most")
    name: str | None = Field(None, description="table name (default: the file's stem)")


class DataSection(_Strict):
    probes: str | None = Field(None, description="probe file (JSONL/CSV/Parquet); None = the demo's")
    sft: tuple[str, ...] | None = Field(None, description="SFT files, one batch each; None = the demo's")
    metadata: tuple[MetadataSource, ...] = Field((), description="dataset tables joined to v_pair_summary")
    allow_probe_overlap: bool = False


class WatchSection(_Strict):
    """The watched folder of SFT files: each new content is a new batch (Dagster dynamic partition)."""

    folder: str | None = Field(None, description="folder of SFT files; None = the demo world's SFT folder (demo only)")
    patterns: tuple[str, ...] = Field(("*.jsonl", "*.parquet", "*.csv"), description="file name patterns that count")
    sensor_interval_s: int = Field(30, ge=5, description="how often the sensor looks")
    sensor_running: bool = Field(True, description="sensor on by default under the daemon")
    cron: str = Field("0 3 * * *", description="schedule that re-runs everything")
    schedule_running: bool = Field(False, description="schedule on by default under the daemon")


class SAETrainingSettings(_Strict):
    """`smda sae train`: an SAE on the residual stream of `model` (or the demo's) from a corpus.

    Everything here but `corpus` and `cache_dir` decides the SAE, and its hash names the cache
    folder. `topk` and `batchtopk` are the paper's family (BatchTopK keeps k active on average
    over a batch and is saved as a JumpReLU SAE with the learnt global threshold, as sae-lens
    does); `standard` is a ReLU SAE with an L1 penalty.
    """

    corpus: tuple[str, ...] = Field((), description="JSONL files of prompt + response (or text) rows; empty = the demo world's SFT pairs")
    hook_layer: int | None = Field(None, description="block L (resid_post); None = model.hook_layer, else the middle block")
    architecture: Literal["topk", "batchtopk", "standard"] = "topk"
    d_sae: int = Field(2304, gt=0)
    k: int = Field(32, gt=0, description="active features per token (topk) or on average (batchtopk)")
    l1_coefficient: float = Field(5.0, ge=0, description="standard architecture only")
    n_tokens: int = Field(200_000, gt=0, description="activation tokens collected for training")
    eval_tokens: int = Field(8192, gt=0, description="held-out tokens for the report")
    max_seq_tokens: int = Field(256, gt=0, description="longest corpus sequence read")
    chunk_tokens: int = Field(16384, gt=0, description="activations per on-disk chunk (memory stays flat)")
    steps: int = Field(3000, gt=0)
    batch_size: int = Field(1024, gt=0)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    skip_template_prefix: bool = Field(True, description="leave out the chat template's shared opening tokens")
    checkpoint_every: int = Field(250, gt=0, description="steps between resumable checkpoints")
    cache_dir: str = Field(".cache/smda-sae", description="trained SAEs, by hash of model, corpus and settings")

    def identity(self) -> dict:
        """The fields that decide the trained SAE (what keys its cache)."""
        return self.model_dump(exclude={"corpus", "cache_dir"})


class SMDAConfig(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)  # `validate` is the YAML key of `validation`

    preset: Literal["default", "paper"] = "default"
    model: ModelSection = ModelSection()
    sae: SAESection = SAESection()
    features: FeatureSection = FeatureSection()
    behaviour: BehaviourSection = BehaviourSection()
    policy: PolicySettings = PolicySettings()
    shifts: ShiftSettings = ShiftSettings()
    attribution: AttributionSettings = AttributionSettings()
    curation: CurationSettings = CurationSettings()
    demo: DemoSection = DemoSection()
    data: DataSection = DataSection()
    watch: WatchSection = WatchSection()
    sae_training: SAETrainingSettings = SAETrainingSettings()
    gradient: GradientSettings = GradientSettings()
    validation: ValidateSettings = Field(ValidateSettings(), alias="validate", description="the `validate` section")
    execution: ExecutionSettings = ExecutionSettings()
    warehouse: str = "warehouse/warehouse.duckdb"

    @model_validator(mode="after")
    def _gpu_per_task(self) -> "SMDAConfig":
        if self.execution.engine == "ray" and self.model.device == "cuda" and self.execution.gpus_per_task == 0:
            raise ValueError("execution.gpus_per_task: model.device is 'cuda' and the pair steps run on Ray: give each "
                             "task a GPU (gpus_per_task: 1, or a fraction such as 0.5 to share one)")
        return self

    @property
    def is_demo(self) -> bool:
        return self.model.path is None

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections, to key caches and code versions."""
        payload = {s: getattr(self, s).model_dump() if hasattr(getattr(self, s), "model_dump") else getattr(self, s) for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


PRESETS: dict[str, dict[str, Any]] = {
    # The reference paper's method (DESIGN §3).
    "paper": {
        "features": {"position": "end_of_turn"},
        "policy": {"selection": "contrast", "contrast_threshold": 0.1, "design": "raw", "intercept": False, "lam": 5.0},
        "shifts": {"delta_x": "linearised"},
        "attribution": {"primary": "linear"},
    },
    # What we recommend.
    "default": {
        "features": {"position": "end_of_turn"},
        "policy": {"selection": "contrast", "contrast_threshold": 0.1, "max_features": 64, "design": "standardised", "intercept": True, "lam": None},
        "shifts": {"delta_x": "exact"},
        "attribution": {"primary": "refit"},
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _flatten(errors: list[dict], prefix: tuple = ()) -> list[dict]:
    """Errors of nested sections (raised from their own constructor) under their full dotted key."""
    out = []
    for err in errors:
        inner = getattr((err.get("ctx") or {}).get("error"), "details", None)
        if inner is not None:
            out += _flatten(inner, prefix + tuple(err["loc"]))
        else:
            out.append({**err, "loc": prefix + tuple(err["loc"])})
    return out


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or the item of a tuple/list of models (`data.metadata`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section(arg)
        if found is not None:
            return found
    return None


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list of sections
            continue
        field = model.model_fields.get(str(part))
        inner = _section(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _key(loc: tuple) -> str:
    """A config key as people write it: `data.metadata[0].path`, `attribution.methods[1]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def build_config(raw: dict[str, Any] | None = None, *, source: str = "config") -> SMDAConfig:
    """Validate a raw mapping (YAML content) after filling in its preset."""
    raw = dict(raw or {})
    preset = raw.get("preset", "default")
    if preset not in PRESETS:
        raise ConfigError(f"{source}: preset '{preset}' is unknown; choose one of {sorted(PRESETS)}")
    merged = _merge(PRESETS[preset], raw)
    try:
        return SMDAConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_messages(exc, SMDAConfig))) from None


def _messages(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per error, naming the dotted key; an unknown key gets the closest valid one."""
    lines = []
    for err in _flatten(exc.errors()):
        loc = tuple(err["loc"])
        dotted = _key(loc)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _valid_keys(model, loc), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"unknown key '{dotted}'{hint}")
            continue
        if err["type"] == "missing":
            msg = "missing: this key is required"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "literal_error":  # a misspelt choice: the closest allowed one
            allowed = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            close = difflib.get_close_matches(str(err.get("input")), allowed, n=1, cutoff=0.5)
            msg += f"; did you mean '{close[0]}'?" if close else ""
        lines.append(f"'{dotted}': {msg}" if dotted else msg)
    return lines


def load_config(path: str | Path | None = None, **overrides: Any) -> SMDAConfig:
    """Read a YAML config (None = embedded demo defaults); keyword overrides are merged section-wise."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return build_config(_merge(raw, overrides), source=str(path or "config"))
