"""The three tiers of one batch of pairs (DESIGN §4 "Three tiers"): which runs where, and their tables together.

`shifts.method` chooses the tier for every pair (`exact`, `gradient`, `screen`); with a cheaper tier,
`validate.sample` pairs (seeded) are also measured by `exact`, and the agreement of the cheaper tier
with exact on them is a table of the batch (`method_agreement`). The rows of every tier land in the same
tables, tagged with their `method`; the exact sample's pair_summary rows carry `sample = true`, so
`v_pair_summary` keeps one row per pair (the configured tier's). Per-probe shifts (`pair_shifts`) are
stored for the exact tier's pairs only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from smda_core.config import SMDAConfig


def exact_sample(pairs: pa.Table, n: int, seed: int) -> pa.Table:
    """A seeded sample of n pairs (all when n ≥ the batch), in file order."""
    m = pairs.num_rows
    if n >= m:
        return pairs
    idx = np.sort(np.random.default_rng(seed).choice(m, size=n, replace=False))
    return pairs.take(pa.array(idx))


def attribute_tiers(stage, batch: str, policy, scores, pairs: pa.Table, cfg: SMDAConfig,
                    policy_version: str | None) -> dict[str, pa.Table]:
    """Every staged tier of the batch attributed and tabled; with a cheaper tier and an exact sample, their agreement."""
    import pandas as pd

    from smda_core.api import attribute
    from smda_core.attribution.agreement import method_agreement
    from smda_core.attribution.screen import screen_scores
    from smda_core.store.tables import agreement_table, pair_tables, screen_summary_table, tier_tables

    probe_ids = list(scores.probe_ids)
    parts, exact_attr, cheap = [], None, None
    cheap_tier = stage.load_tier(batch) if cfg.shifts.method != "exact" and stage.has(batch, "tier.npz") else None
    if stage.has(batch, "shifts.npz"):
        shifts = stage.load_shifts(batch)
        sub = pairs.filter(pc.is_in(pairs["pair_id"], pa.array(shifts.pair_ids)))
        exact_attr = attribute(policy, scores, shifts, sub, cfg)
        t = pair_tables(batch, shifts, exact_attr, policy, probe_ids, delta_x=cfg.shifts.delta_x,
                        policy_version=policy_version)
        s = t["pair_summary"]
        t["pair_summary"] = s.append_column("sample", pa.array([cheap_tier is not None] * s.num_rows, pa.bool_()))
        if cheap_tier is not None:  # the sample's per-group and mechanism rows would double the configured tier's
            t = {name: t[name] for name in ("pair_attribution", "pair_summary", "pair_shifts") if name in t}
        parts.append(t)
    if cheap_tier is not None and cheap_tier.method == "gradient":
        cheap = attribute(policy, scores, cheap_tier, pairs, cfg)
        t = pair_tables(batch, cheap_tier, cheap, policy, probe_ids, include_shifts=False, policy_version=policy_version)
        s = t["pair_summary"]
        t["pair_summary"] = s.append_column("sample", pa.array([False] * s.num_rows, pa.bool_()))
        parts.append(t)
        cheap_summary = pd.DataFrame({k: v for k, v in cheap.pair_summary.items() if k != "intended_features"})
        cheap_attr = pd.DataFrame(cheap.pair_attribution)
    elif cheap_tier is not None:  # screen
        values = screen_scores(policy, cheap_tier.prompt_X, cheap_tier.response_refuses)
        parts.append({"pair_summary": screen_summary_table(batch, cheap_tier.pair_ids, values, cheap_tier.seconds,
                                                           policy_version=policy_version)})
        cheap_summary = pd.DataFrame({"pair_id": cheap_tier.pair_ids, **values})
        cheap_attr = None
    tables = tier_tables(batch, parts)
    if "pair_attribution" not in tables:  # screen only: no Δβ, an empty partition
        from smda_core.store.warehouse import TABLES

        tables["pair_attribution"] = TABLES["pair_attribution"].empty_table()
    if exact_attr is not None and cheap_tier is not None:
        rows = method_agreement(pd.DataFrame({k: v for k, v in exact_attr.pair_summary.items() if k != "intended_features"}),
                                cheap_summary, method=cheap_tier.method,
                                reference_attribution=pd.DataFrame(exact_attr.pair_attribution),
                                other_attribution=cheap_attr, reference_method=exact_attr.primary)
        tables["method_agreement"] = agreement_table(batch, rows, policy_version=policy_version)
    return tables
