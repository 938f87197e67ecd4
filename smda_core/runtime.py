"""The model runtime of one config: model, tokenizer, SAE, hook point, tokenised probes and openings.

Only the steps that run the model load one (probe readout, shifts, curation, validation); the
numpy steps (policy, attribution) take the arrays it measures (`smda_core.model.measurements`)
and their settings instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from smda_core.config import SMDAConfig
from smda_core.errors import InputError, SMDAError
from smda_core.model.chat import EncodedPrompt, context_length
from smda_core.model.loading import check_compatible, hook_layer_from_sae, load_model, load_sae
from smda_core.model.measurements import ProbeScores
from smda_core.model.readout import Readout, greedy_refused, read_probes
from smda_core.policy.behaviour import behaviour_from_logp
from smda_core.sources import Sources, resolve_sources



@dataclass
class ModelRuntime:
    """What the steps that run the model share: model, tokenizer, SAE, hook point, tokenised probes, openings.

    Only readout, shifts, curation and SAE training load one; the numpy steps (policy,
    attribution) take arrays and settings instead.
    """

    config: SMDAConfig
    sources: Sources
    model: Any
    tokenizer: Any
    sae: Any
    hook_layer: int
    probes: pa.Table
    encoded: list[EncodedPrompt]
    refusal_openings: tuple[tuple[int, ...], ...]
    compliance_openings: tuple[tuple[int, ...], ...]

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.hook_layer}.hook_resid_post"

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def probe_setup(self):
        """The probes and openings as the pair steps (exact, gradient, screen) read them."""
        from smda_core.model.shifts import ProbeSetup

        cfg = self.config
        return ProbeSetup(self.encoded, self.refusal_openings, self.compliance_openings, cfg.behaviour.kind,
                          cfg.features.position, self.hook_layer, self.pad_id)

    def with_sae(self, sae) -> ModelRuntime:
        """The same model and probes read through another SAE (stability across SAE seeds)."""
        return dataclasses.replace(self, sae=sae)

    def behaviour(self, logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """y and refusal_prob from the log-probabilities of refusal then compliance openings, (n, R + C)."""
        n_ref = len(self.refusal_openings)
        return behaviour_from_logp(logp[:, :n_ref], self.config.behaviour.kind,
                                   logp[:, n_ref:] if self.compliance_openings else None)

    def read(self, model=None, *, prompts: Sequence[EncodedPrompt] | None = None, feature_ids: np.ndarray | None = None,
             progress: bool = False) -> tuple[Readout, np.ndarray, np.ndarray]:
        """One pass of `model` (default: the base) over the probes: readout, y and refusal_prob."""
        f = self.config.features
        r = read_probes(model if model is not None else self.model, self.sae, self.hook_layer,
                        self.encoded if prompts is None else prompts,
                        list(self.refusal_openings) + list(self.compliance_openings), position=f.position,
                        batch_size=f.batch_size, pad_id=self.pad_id, padding_side=f.padding_side, feature_ids=feature_ids,
                        progress=progress)
        y, prob = self.behaviour(r.logp_openings)
        return r, y, prob


def load_runtime(config: SMDAConfig, *, sources: Sources | None = None, progress: bool = True) -> ModelRuntime:
    """Load model, tokenizer and SAE, check they fit, read and tokenise the probes."""
    from smda_core.inputs import read_probes as read_probe_file
    from smda_core.model.chat import encode_openings, encode_prompt

    src = sources or resolve_sources(config, progress=progress)
    model, tokenizer = load_model(src.model, dtype=config.model.dtype, device=config.model.device,
                                  trust_remote_code=config.model.trust_remote_code)
    sae = load_sae(**src.sae, device=config.model.device)
    layer = src.hook_layer if src.hook_layer is not None else hook_layer_from_sae(sae)
    if layer is None:
        raise SMDAError("model.hook_layer is not set and the SAE's metadata names no blocks.L.hook_resid_post")
    check_compatible(model, sae, layer)
    probes = read_probe_file(src.probes)
    encoded = [encode_prompt(tokenizer, p, name=f"{src.probes} probe {pid}", max_tokens=config.features.max_prompt_tokens)
               for pid, p in zip(probes["probe_id"].to_pylist(), probes["prompt"].to_pylist())]
    # Compliance openings cost extra teacher-forcing branches: only the `contrast` behaviour reads them.
    compliance = src.compliance_openings if config.behaviour.kind == "contrast" else ()
    refusal_ids = encode_openings(tokenizer, src.refusal_openings)
    compliance_ids = encode_openings(tokenizer, compliance, what="compliance_openings") if compliance else ()
    _check_context(encoded, probes, [*refusal_ids, *compliance_ids], context_length(model.config), src.probes)
    return ModelRuntime(config, src, model, tokenizer, sae, int(layer), probes, encoded, refusal_ids, compliance_ids)


def _check_context(encoded: list[EncodedPrompt], probes: pa.Table, openings: list[tuple[int, ...]], context: int | None,
                   path: str) -> None:
    """Each probe plus the longest opening read after it fits the model's context (positions it was built for)."""
    if context is None:
        return
    span = max((len(o) for o in openings), default=0)
    for pid, e in zip(probes["probe_id"].to_pylist(), encoded):
        if len(e.input_ids) + span > context:
            raise InputError(f"probe {pid}: {len(e.input_ids)} prompt tokens plus {span} of the openings are more than the "
                             f"model's context of {context} positions (max_position_embeddings); shorten the prompt",
                             path=path, field="prompt")


def measure_probes(runtime: ModelRuntime, *, progress: bool = True, maxima: bool = True) -> ProbeScores:
    """Features at the configured position and behaviour, from one pass; `refused` by greedy decoding if absent;
    with `maxima`, each feature's strongest activation over the request's tokens too (`read_maxima`)."""
    r, y, prob = runtime.read(progress=progress)
    given = runtime.probes["refused"].to_pylist()
    if all(v is not None for v in given):
        refused, source = np.asarray(given, dtype=bool), "file"
    else:
        greedy = greedy_refused(runtime.model, runtime.encoded, runtime.refusal_openings,
                                n_tokens=runtime.config.behaviour.greedy_tokens, batch_size=runtime.config.features.batch_size,
                                pad_id=runtime.pad_id, progress=progress)
        refused = np.array([g if v is None else v for v, g in zip(given, greedy)], dtype=bool)
        source = "greedy"
    p = runtime.probes
    return ProbeScores(np.asarray(p["probe_id"].to_pylist()), np.asarray(p["category"].to_pylist()),
                       np.asarray(p["harmful"].to_pylist(), dtype=bool), refused, source, y, prob,
                       r.coo_probe, r.coo_feature, r.coo_value,
                       maxima=read_maxima(runtime, progress=progress) if maxima else None)


def read_maxima(runtime: ModelRuntime, *, progress: bool = True) -> tuple[np.ndarray, ...]:
    """Every probe's strongest activation of each SAE feature over its user tokens, and that token's index (COO:
    probe index, feature, activation, token index).

    The configured position (end of turn) shows what the model decides; a feature of a phrase in the
    request fires on the phrase's tokens and may be faint by the end of the turn. The effect fit and
    the feature examples read these maxima; `v_features` shows them as position `user_max`."""
    from smda_core.model.readout import token_maxima

    return token_maxima(runtime.model, runtime.sae, runtime.hook_layer, runtime.encoded,
                        batch_size=runtime.config.features.batch_size, pad_id=runtime.pad_id, progress=progress)


def maxima_table(scores: ProbeScores) -> pa.Table:
    """The `feature_maxima` table of a readout (`measure_probes(..., maxima=True)`)."""
    pi, fi, vi, ti = scores.maxima
    return pa.table({"probe_id": pa.array(np.asarray(scores.probe_ids)[pi], pa.string()),
                     "feature_id": pa.array(fi, pa.int32()), "activation": pa.array(vi, pa.float64()),
                     "token_index": pa.array(ti, pa.int64())})


def feature_examples(runtime: ModelRuntime, scores: ProbeScores, *, top: int = 3) -> pa.Table:
    """Each SAE feature's `top` probes by its strongest activation on a user token (`scores.maxima`), the text
    with that token marked «so» — what a person reads to know what a named feature stands for."""
    pi, fi, vi, ti = scores.maxima
    order = np.lexsort((pi, -vi, fi))  # by feature, strongest first, then probe order
    ids = runtime.probes["probe_id"].to_pylist()
    rows, seen = [], {}
    for j in order:
        f = int(fi[j])
        seen[f] = seen.get(f, 0) + 1
        if seen[f] > top:
            continue
        enc = runtime.encoded[int(pi[j])]
        pieces = [runtime.tokenizer.decode([t]) for t in (enc.input_ids[q] for q in enc.user_positions)]
        mark = list(enc.user_positions).index(int(ti[j]))
        pieces[mark] = f"«{pieces[mark].strip()}»"
        rows.append({"feature_id": f, "rank": seen[f], "probe_id": ids[int(pi[j])], "activation": float(vi[j]),
                     "token": runtime.tokenizer.decode([enc.input_ids[int(ti[j])]]).strip(),
                     "marked_text": " ".join(s.strip() for s in pieces if s.strip())})
    schema = pa.schema([("feature_id", pa.int32()), ("rank", pa.int32()), ("probe_id", pa.string()),
                        ("activation", pa.float64()), ("token", pa.string()), ("marked_text", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)
