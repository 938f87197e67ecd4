"""Do the attributions mean something? Drop pairs by a rule, retrain from the base, re-measure (DESIGN §5).

Retraining is plain supervised fine-tuning from the base weights on a chosen set of pairs
(loss on response tokens only), deterministic on CPU for a seed. Every model is evaluated on
held-out probes with soft metrics from `refusal_prob` against `harmful` and with greedy
refusal accuracy; the fine-tuned weights live only as long as the evaluation.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from smda_core.attribution import score_names
from smda_core.model.chat import EncodedPrompt, context_length, encode_pair
from smda_core.config import CurationSettings
from smda_core.errors import SMDAError
from smda_core.model.readout import greedy_refused, read_probes
from smda_core.policy.behaviour import behaviour_from_logp
from smda_core.model.training import make_optimizer, sft_batch, train_steps

BAD_KINDS = ("harmful_compliance", "harmless_refusal", "harmless_trigger")



@dataclass(frozen=True)
class EvalSet:
    """Held-out probes and how to score them."""

    prompts: Sequence[EncodedPrompt]
    harmful: np.ndarray
    category: np.ndarray
    refusal_openings: Sequence[tuple[int, ...]]
    hook_layer: int
    pad_id: int


def soft_metrics(p: np.ndarray, harmful: np.ndarray) -> dict[str, float]:
    """Soft correctness, precision, recall and F1 of refusal_prob p against the harmful labels.

    correctness = ½(mean_harmful p + mean_harmless (1−p)); soft TP = Σ p·harmful, so
    precision = TP / Σ p, recall = TP / #harmful.
    """
    p = np.asarray(p, dtype=float)
    h = np.asarray(harmful, dtype=bool)
    tp = float((p * h).sum())
    precision = tp / float(p.sum()) if p.sum() > 0 else 0.0
    recall = tp / float(h.sum()) if h.sum() > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    correctness = 0.5 * (p[h].mean() + (1 - p[~h]).mean())
    return {"correctness": float(correctness), "precision": precision, "recall": recall, "f1": f1}


@torch.no_grad()
def evaluate(model, sae, ev: EvalSet) -> dict:
    """Soft metrics and greedy refusal accuracy of a model on the evaluation probes (overall and per category)."""
    r = read_probes(model, sae, ev.hook_layer, ev.prompts, ev.refusal_openings, pad_id=ev.pad_id, feature_ids=np.zeros(0, int),
                    progress=False)
    _, p = behaviour_from_logp(r.logp_openings, "log_refusal")
    refused = greedy_refused(model, ev.prompts, ev.refusal_openings, pad_id=ev.pad_id, progress=False)
    out = soft_metrics(p, ev.harmful)
    out["refusal_accuracy"] = float((refused == ev.harmful).mean())
    out["per_category"] = {c: {"refusal_prob": float(p[ev.category == c].mean()),
                               "refusal_accuracy": float((refused == ev.harmful)[ev.category == c].mean())}
                           for c in sorted(set(ev.category.tolist()))}
    return out


def retrain(model, tokenizer, pairs: Sequence[tuple[str, str]], settings: CurationSettings, *, progress: bool = False):
    """A fine-tuned copy of `model` (the base is untouched); deterministic for a seed on CPU."""
    if not pairs:
        raise SMDAError("retraining needs at least one pair")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    tuned = copy.deepcopy(model)
    tuned.train()
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                         what="curation.optimizer")
    data = [encode_pair(tokenizer, p, r, name="curation pair", max_tokens=context_length(model.config)) for p, r in pairs]
    pad = tokenizer.pad_token_id

    def epochs():  # each epoch over a fresh shuffle of the pairs
        order = list(range(len(data)))
        for _ in range(settings.epochs):
            rng.shuffle(order)
            for start in range(0, len(data), settings.batch_size):
                yield sft_batch([data[i] for i in order[start: start + settings.batch_size]], pad)

    train_steps(tuned, epochs(), opt, progress=progress, desc="retrain",
                total=settings.epochs * math.ceil(len(data) / settings.batch_size))
    tuned.eval()
    return tuned


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class PairTable:
    """What the rules see of the pairs: ids, prompt type, kind (if known), flags and scores."""

    pair_ids: np.ndarray
    harmful: np.ndarray  # the pair's prompt is harmful (metadata)
    kind: np.ndarray | None
    flagged: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def _score(t: PairTable, name: str) -> np.ndarray:
    if name not in t.scores:
        raise SMDAError(f"unknown score '{name}'; available: {sorted(t.scores)}")
    return t.scores[name]


KIND_FREE = score_names.KIND_FREE  # `quantitative` drops their low outliers
OUTLIER_Z = 3.0


def low_outliers(s: np.ndarray, z: float = OUTLIER_Z) -> np.ndarray:
    """Pairs whose score lies more than z robust sd (1.4826·MAD) below the median of all pairs: no share of bad
    pairs is assumed, and no label is read."""
    med = np.median(s)
    mad = 1.4826 * np.median(np.abs(s - med))
    return (s - med) / (mad if mad > 0 else max(abs(med), 1e-300)) < -z


def select_drops(rule: str, t: PairTable, *, sql: Callable[[str], Sequence[str]] | None = None,
                 recommended: str = "score") -> list[str]:
    """Pair ids a rule drops. Rules: quantitative[:SCORE] | flagged | lowest:SCORE:Q | oracle | sql:SELECT pair_id …

    `quantitative` alone uses the recommended score. With a kind-free score (:data:`KIND_FREE`) it drops the
    score's low outliers (`low_outliers`); with the paper's scores it is the paper's median rule per prompt kind."""
    name, _, arg = rule.partition(":")
    ids = t.pair_ids
    if name == "quantitative" and (arg or recommended) in KIND_FREE:
        drop = low_outliers(_score(t, arg or recommended))
    elif name == "quantitative":  # the paper's rule, with any score in place of alignment
        s = _score(t, arg)
        harmful_median = np.median(s[t.harmful])
        harmless_median = np.median(s[~t.harmful])
        drop = (t.harmful & (s < harmless_median)) | (~t.harmful & (s > harmful_median))
    elif name == "flagged":
        drop = t.flagged.astype(bool)
    elif name == "lowest":
        score_name, _, q = arg.partition(":")
        s = _score(t, score_name)
        q_val = float(q) if q else 0.1
        n = int(round(q_val * len(ids))) if q_val < 1 else int(q_val)
        drop = np.zeros(len(ids), bool)
        drop[np.argsort(s, kind="stable")[:n]] = True
    elif name == "oracle":
        if t.kind is None:
            raise SMDAError("rule 'oracle' needs a `kind` column in the SFT metadata")
        drop = np.isin(t.kind, BAD_KINDS)
    elif name == "sql":
        if sql is None or not arg.strip():
            raise SMDAError("rule 'sql:' needs a SELECT returning pair_id")
        wanted = set(sql(arg))
        unknown = wanted - set(ids.tolist())
        if unknown:
            raise SMDAError(f"rule sql: returned pair ids that are not in the SFT set: {sorted(unknown)[:5]}")
        drop = np.isin(ids, list(wanted))
    else:
        raise SMDAError(f"unknown rule '{rule}'; use quantitative[:SCORE], flagged, lowest:SCORE:Q, oracle or sql:SELECT …")
    dropped = ids[drop].tolist()
    if not dropped:
        raise SMDAError(f"rule '{rule}' drops no pair: nothing to compare")
    if len(dropped) == len(ids):
        raise SMDAError(f"rule '{rule}' drops every pair: nothing left to train on")
    return dropped


# ---------------------------------------------------------------- experiment


@dataclass
class Variant:
    variant: str
    n_pairs: int
    metrics: dict
    dropped: list[str]
    seed: int


def run_curation(model, tokenizer, sae, ev: EvalSet, pairs: Sequence[tuple[str, str, str]], dropped: Sequence[str], *,
                 settings: CurationSettings = CurationSettings(), oracle: Mapping[str, Sequence[str]] | None = None,
                 n_random: int = 5, progress: bool = True) -> list[Variant]:
    """Evaluate base, full SFT, curated (minus `dropped`), the oracle and `n_random` random removals of the same
    size, each retrained with `settings.seeds` seeds.

    `oracle` maps each bad kind to its pairs: the variant `oracle` drops them all, and `oracle:KIND` drops one kind
    only, so a reader sees which kind's removal moves the metric (and which moves it the other way)."""
    ids = [p[0] for p in pairs]
    by_id = {p[0]: (p[1], p[2]) for p in pairs}
    plan = [("full", []), ("curated", list(dropped))]
    if oracle:
        plan.append(("oracle", [i for drop in oracle.values() for i in drop]))
        plan.extend((f"oracle:{kind}", list(drop)) for kind, drop in oracle.items() if len(oracle) > 1 and drop)
    rng = np.random.default_rng(settings.seed)
    for r in range(n_random):
        plan.append((f"random_seed_{r}", rng.choice(ids, size=len(dropped), replace=False).tolist()))
    seeds = range(settings.seed, settings.seed + settings.seeds)
    variants = [Variant("base", 0, evaluate(model, sae, ev), [], settings.seed)]
    done: dict[tuple, dict] = {}  # the same drop set (e.g. curated == oracle) is trained once per seed
    bar = tqdm(total=len(plan) * len(seeds), desc="curation variants", disable=not progress)
    for seed in seeds:
        for name, drop in plan:
            key = (frozenset(drop), seed)
            keep = [by_id[i] for i in ids if i not in key[0]]
            if key not in done:
                done[key] = evaluate(retrain(model, tokenizer, keep, settings.replace(seed=seed)), sae, ev)
            variants.append(Variant(name, len(keep), done[key], list(drop), seed))
            bar.update()
    bar.close()
    return variants


def comparison(variants: Sequence[Variant], bad: set[str] | None, metric: str = "f1") -> dict:
    """Curated vs full, oracle and random (mean ± sd); share of the oracle's gain; precision/recall of the dropped
    set. Each variant's metric is its mean over the retraining seeds."""
    by: dict[str, list[Variant]] = {}
    for v in variants:
        by.setdefault(v.variant, []).append(v)
    mean = {name: float(np.mean([v.metrics[metric] for v in vs])) for name, vs in by.items()}
    rand = np.array([value for name, value in mean.items() if name.startswith("random_seed_")])
    full, cur = mean["full"], mean["curated"]
    out = {"base": mean["base"], "full": full, "curated": cur,
           "random_mean": float(rand.mean()) if rand.size else float("nan"),
           "random_sd": float(rand.std(ddof=1)) if rand.size > 1 else float("nan"),
           "seeds": len(by["full"])}
    if "oracle" in mean:
        gain = mean["oracle"] - full
        out["oracle"] = mean["oracle"]
        out["share_of_oracle_gain"] = (cur - full) / gain if gain != 0 else float("nan")
        out.update({name: value for name, value in mean.items() if name.startswith("oracle:")})
    if bad is not None:
        d = set(by["curated"][0].dropped)
        hit = len(d & bad)
        out["drop_precision"] = hit / len(d) if d else float("nan")
        out["drop_recall"] = hit / len(bad) if bad else float("nan")
    return out


def variants_json(variants: Sequence[Variant]) -> str:
    return json.dumps([{"variant": v.variant, "n_pairs": v.n_pairs, "dropped": v.dropped} for v in variants])


def pair_table(summary, pairs) -> PairTable:
    """Join the pair summary with the SFT metadata (pyarrow tables) into what the rules see."""
    meta = {pid: i for i, pid in enumerate(pairs["pair_id"].to_pylist())}
    ids = summary["pair_id"].to_pylist()
    missing = [p for p in ids if p not in meta]
    if missing:
        raise SMDAError(f"pairs {missing[:5]} are attributed but not among the SFT pairs")
    rows = [meta[p] for p in ids]
    if "harmful" not in pairs.column_names:
        raise SMDAError("the SFT metadata needs a `harmful` column (is the pair's prompt harmful?) for the curation rules")
    harmful = np.asarray([pairs["harmful"][i].as_py() for i in rows], dtype=bool)
    kind = np.asarray([pairs["kind"][i].as_py() for i in rows]) if "kind" in pairs.column_names else None
    scores = {c: np.asarray(summary[c].to_pylist(), dtype=float) for c in (*score_names.ALL, "alignment", "interference")
              if c in summary.column_names}
    if "dy_harmless" in scores:  # higher = better for both prompt kinds, as the rules expect
        scores["neg_dy_harmless"] = -scores["dy_harmless"]
    return PairTable(np.asarray(ids), harmful, kind, np.asarray(summary["flagged"].to_pylist(), dtype=bool), scores)


def eval_set(runtime, heldout: np.ndarray, harmful: np.ndarray, category: np.ndarray) -> EvalSet:
    """The held-out probes of the policy's stratified split (not used by its accuracy fit)."""
    idx = np.flatnonzero(heldout)
    return EvalSet([runtime.encoded[i] for i in idx], harmful[idx], category[idx], runtime.refusal_openings,
                   runtime.hook_layer, runtime.pad_id)


def experiment_rows(experiment_id: str, rule: str, variants: Sequence[Variant]):
    """The `curation` table rows of one experiment."""
    import datetime as dt

    import pyarrow as pa

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return pa.table({
        "experiment_id": [experiment_id] * len(variants), "rule": [rule] * len(variants),
        "variant": [v.variant for v in variants], "n_pairs": pa.array([v.n_pairs for v in variants], pa.int64()),
        **{m: [float(v.metrics[m]) for v in variants] for m in ("correctness", "precision", "recall", "f1", "refusal_accuracy")},
        "dropped": [json.dumps(v.dropped) for v in variants], "seed": pa.array([v.seed for v in variants], pa.int64()),
        "per_category": [json.dumps(v.metrics["per_category"]) for v in variants],
        "created_at": pa.array([now] * len(variants), pa.timestamp("us")),
    })


@dataclass(frozen=True)
class CurationResult:
    """One curation experiment: the rule, every evaluated variant, and curated against full / oracle / random."""

    experiment_id: str
    rule: str
    variants: list[Variant]
    comparison: dict

    def table(self):
        """The `curation` table rows of this experiment."""
        return experiment_rows(self.experiment_id, self.rule, self.variants)


def run_experiment(runtime, heldout: np.ndarray, harmful: np.ndarray, category: np.ndarray, summary, pairs, rule: str,
                   settings, *, sql: Callable[[str], Sequence[str]] | None = None, n_random: int | None = None,
                   progress: bool = True) -> CurationResult:
    """Select the drops by `rule` from the pair summary and SFT pairs (Arrow tables), retrain every variant
    from the base model, evaluate on the held-out probes (`heldout` mask), and compare."""
    import hashlib
    import time

    table = pair_table(summary, pairs)
    dropped = select_drops(rule, table, sql=sql)
    oracle = ({kind: table.pair_ids[table.kind == kind].tolist() for kind in BAD_KINDS} if table.kind is not None
              else None)
    ev = eval_set(runtime, heldout, harmful, category)
    by_id = dict(zip(pairs["pair_id"].to_pylist(), zip(pairs["prompt"].to_pylist(), pairs["response"].to_pylist())))
    rows = [(p, *by_id[p]) for p in table.pair_ids.tolist()]
    variants = run_curation(runtime.model, runtime.tokenizer, runtime.sae, ev, rows, dropped, settings=settings,
                            oracle=oracle, n_random=n_random or settings.n_random, progress=progress)
    experiment_id = hashlib.sha256(f"{rule}|{settings}|{time.time()}".encode()).hexdigest()[:10]
    bad = {i for drop in oracle.values() for i in drop} if oracle is not None else None
    return CurationResult(experiment_id, rule, variants, comparison(variants, bad))
