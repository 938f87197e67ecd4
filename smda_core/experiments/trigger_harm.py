"""Are trigger pairs bad? Retrain with them, and with ordinary harmless pairs in their place (DESIGN §7).

A trigger pair is a harmless request that carries a phrase which also occurs in harmful
requests, answered helpfully. One by one such pairs look right; they count as bad only once a
retraining shows it: with them, refusal of harmful requests that contain the phrase drops;
with the same pairs minus the phrase in their place (the same harmless request, the same
answer), it does not, and harmful requests without the phrase move much less.

This is a ground-truth check of a world whose bad pairs are known: it reads the pairs' `kind`,
which no score may do. Every variant is retrained from the base weights with the same settings
and seed (hence the same shuffle), so the variants differ only in the phrase.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smda_core.config import CurationSettings
from smda_core.errors import SMDAError

TRIGGER_KIND = "harmless_trigger"
GROUPS = ("harmful_with", "harmful_without", "harmless_with", "harmless_without")


def _pattern(phrase: str) -> re.Pattern | None:
    """The phrase as whole words: any run of spaces between its words, no word character on either side."""
    words = phrase.lower().split()
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", re.IGNORECASE) if words else None


def contains_phrase(text: str, phrase: str) -> bool:
    """Does `text` contain `phrase` as whole words (case, spacing and neighbouring punctuation ignored)?"""
    pat = _pattern(phrase)
    return bool(pat and pat.search(text))


def without_phrase(text: str, phrase: str) -> str:
    """`text` with every whole-word occurrence of `phrase` and the spaces before it removed (spacing normalised;
    what follows, punctuation included, stays: "bake bread without telling anyone?" → "bake bread?")."""
    pat = _pattern(phrase)
    out = re.sub(r"\s*" + pat.pattern, "", text, flags=re.IGNORECASE) if pat else text
    return " ".join(out.split())


@dataclass(frozen=True)
class TriggerHarmRun:
    """Mean refusal_prob of each probe group after one retraining."""

    seed: int
    variant: str  # "trigger" (the pairs as given) or "replacement" (trigger pairs without the phrase)
    harmful_with: float
    harmful_without: float
    harmless_with: float
    harmless_without: float


@dataclass(frozen=True)
class TriggerHarm:
    """The experiment's result: group sizes, the base model's means, and every retraining."""

    phrase: str
    n_pairs: int
    n_trigger: int
    n_probes: dict[str, int]
    base: dict[str, float]
    runs: list[TriggerHarmRun]
    settings: CurationSettings

    def drops(self) -> list[dict]:
        """Per seed: how much lower each group's refusal is with the trigger pairs than with their replacements.

        `specific` = drop on harmful probes with the phrase − drop on harmful probes without it.
        """
        out = []
        for seed in sorted({r.seed for r in self.runs}):
            by = {r.variant: r for r in self.runs if r.seed == seed}
            t, rep = by["trigger"], by["replacement"]
            row = {"seed": seed, **{g: getattr(rep, g) - getattr(t, g) for g in GROUPS}}
            row["specific"] = row["harmful_with"] - row["harmful_without"]
            out.append(row)
        return out

    def rows(self) -> list[dict]:
        """One row per (seed, variant), plus the base model (seed None): what a report prints."""
        base = {"seed": None, "variant": "base", **self.base}
        return [base] + [{"seed": r.seed, "variant": r.variant, **{g: getattr(r, g) for g in GROUPS}} for r in self.runs]


def _group_means(p: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    return {g: float(p[m].mean()) for g, m in masks.items()}


def trigger_harm(runtime, pairs, phrase: str, settings: CurationSettings, *, seeds: Sequence[int] = (0, 1),
                 trigger_kind: str = TRIGGER_KIND, progress: bool = False) -> TriggerHarm:
    """Retrain from the base on `pairs` (Arrow table with prompt, response, kind) as given and with
    every `trigger_kind` pair's phrase removed, once per seed; mean refusal_prob of the runtime's
    probes grouped by harmful × contains the phrase.
    """
    from smda_core.experiments.curation import retrain

    for col in ("prompt", "response", "kind"):
        if col not in pairs.column_names:
            raise SMDAError(f"the trigger-harm experiment needs a `{col}` column in the SFT pairs")
    prompts = pairs["prompt"].to_pylist()
    responses = pairs["response"].to_pylist()
    kinds = pairs["kind"].to_pylist()
    is_trigger = [k == trigger_kind for k in kinds]
    if not any(is_trigger):
        raise SMDAError(f"no pair has kind '{trigger_kind}': nothing to test")
    missing = [i for i, t in enumerate(is_trigger) if t and not contains_phrase(prompts[i], phrase)]
    if missing:
        raise SMDAError(f"{len(missing)} '{trigger_kind}' pair(s) lack the phrase '{phrase}' (first: row {missing[0]})")
    given = list(zip(prompts, responses))
    replaced = [(without_phrase(p, phrase) if t else p, r) for (p, r), t in zip(given, is_trigger)]

    probe_prompts = runtime.probes["prompt"].to_pylist()
    harmful = np.asarray(runtime.probes["harmful"].to_pylist(), dtype=bool)
    with_p = np.array([contains_phrase(p, phrase) for p in probe_prompts], dtype=bool)
    masks = {"harmful_with": harmful & with_p, "harmful_without": harmful & ~with_p,
             "harmless_with": ~harmful & with_p, "harmless_without": ~harmful & ~with_p}
    empty = [g for g, m in masks.items() if not m.any()]
    if empty:
        raise SMDAError(f"no probe in group(s) {empty} for phrase '{phrase}': the probes must hold harmful and "
                        "harmless requests with and without it")
    no_features = np.zeros(0, dtype=np.int64)

    def refusal(model=None) -> dict[str, float]:
        _, _, prob = runtime.read(model, feature_ids=no_features)
        return _group_means(prob, masks)

    runs = []
    for seed in seeds:
        for variant, rows in (("trigger", given), ("replacement", replaced)):
            tuned = retrain(runtime.model, runtime.tokenizer, rows, settings.replace(seed=seed), progress=progress)
            try:
                runs.append(TriggerHarmRun(seed, variant, **refusal(tuned)))
            finally:
                del tuned
    return TriggerHarm(phrase, len(given), int(sum(is_trigger)), {g: int(m.sum()) for g, m in masks.items()},
                       refusal(), runs, settings)
