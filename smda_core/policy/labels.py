"""Names for SAE features: an imported Neuronpedia-style export, or automatic labels.

An automatic label says what a feature fires on among the probes: the category that
dominates its top-activating probes and the words most over-represented in them, e.g.
`weapons 90%: grenade, landmine`. Pure Python/numpy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureLabel:
    feature_id: int
    label: str
    source: str  # 'import' or 'auto'
    top_probes: tuple[int, ...]  # probe row indices, strongest first


_WORD = re.compile(r"[a-z][a-z'\-]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def auto_labels(X: np.ndarray, feature_ids: Sequence[int], prompts: Sequence[str], categories: Sequence[str],
                *, top: int = 10, n_words: int = 3) -> list[FeatureLabel]:
    """Label each column of X (n probes × k features, raw activations) from its top-activating probes.

    Probes are ranked by the feature's activation relative to the other given features
    (activation minus the probe's mean over them), so a feature active everywhere is named
    after where it stands out, not after the loudest probes.
    """
    X = np.asarray(X, dtype=np.float64)
    word_sets = [_words(p) for p in prompts]
    doc_freq = Counter(w for ws in word_sets for w in ws)
    n = len(prompts)
    common = {w for w, c in doc_freq.items() if c > 0.3 * n}
    relative = X - X.mean(axis=1, keepdims=True)
    out = []
    for j, fid in enumerate(feature_ids):
        active = np.flatnonzero(X[:, j] > 0)
        if active.size == 0:
            out.append(FeatureLabel(int(fid), f"feature {fid} (inactive on probes)", "auto", ()))
            continue
        order = active[np.argsort(-relative[active, j], kind="stable")][:top]
        cats = Counter(categories[i] for i in order)
        cat, count = cats.most_common(1)[0]
        in_top = Counter(w for i in order for w in word_sets[i] if w not in common)
        lift = {w: c / len(order) - doc_freq[w] / n for w, c in in_top.items()}
        words = [w for w, _ in sorted(lift.items(), key=lambda kv: (-kv[1], kv[0]))[:n_words]]
        share = count / len(order)
        label = f"{cat} {share:.0%}: {', '.join(words)}" if words else f"{cat} {share:.0%}"
        out.append(FeatureLabel(int(fid), label, "auto", tuple(int(i) for i in order)))
    return out


def merge_labels(auto: list[FeatureLabel], imported: dict[int, str] | None) -> list[FeatureLabel]:
    """Imported descriptions win over automatic ones for the features they cover."""
    if not imported:
        return auto
    return [FeatureLabel(l.feature_id, imported[l.feature_id], "import", l.top_probes) if l.feature_id in imported else l
            for l in auto]
