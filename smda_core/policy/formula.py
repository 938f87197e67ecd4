"""The policy as a formula people read (DESIGN §3.5), features by |β|."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from smda_core.policy.fit import Policy


# --------------------------------------------------------------------------- rendering


def _fmt(v: float) -> str:
    return f"{abs(v):.3g}"


def render_formula(
    policy: Policy,
    labels: Mapping[int, str] | None = None,
    behaviour_name: str = "refusal",
    top: int | None = None,
) -> str:
    """The policy as a formula, features by |β| descending, e.g.
    ``refusal ≈ 0.41 + 0.12·[weapons instructions] − 0.07·[recipe request] …``.

    Unlabelled features show as ``[feature 123]``; with `top`, the rest collapse into "…".
    """
    labels = labels or {}
    coef = policy.coef
    order = np.lexsort((policy.feature_ids, -np.abs(coef)))
    shown = order if top is None else order[: max(int(top), 0)]
    parts: list[str] = []
    if policy.fit.fit_intercept:
        parts.append(("−" if policy.intercept < 0 else "") + _fmt(policy.intercept))
    for j in shown:
        fid = int(policy.feature_ids[j])
        label = labels.get(fid) or f"feature {fid}"
        term = f"{_fmt(coef[j])}·[{label}]"
        if parts:
            parts.append(("− " if coef[j] < 0 else "+ ") + term)
        else:
            parts.append(("−" if coef[j] < 0 else "") + term)
    if len(shown) < len(order):
        parts.append("…")
    if not parts:
        parts.append("0")
    return f"{behaviour_name} ≈ " + " ".join(parts)
