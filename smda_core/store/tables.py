"""The core's results as the warehouse's tables (Arrow, with the contract's column names).

One function per step of the pipeline; the Dagster assets write what these return, and a
notebook user can call them too. Table layouts are owned by `warehouse.TABLES`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from smda_core.attribution import score_names
from smda_core.errors import SMDAError
from smda_core.model.measurements import ProbeScores
from smda_core.policy.labels import FeatureLabel
from smda_core.policy.fit import Policy


def probe_tables(probes: pa.Table, scores: ProbeScores, info: dict[str, str]) -> dict[str, pa.Table]:
    """probes (the validated file, in file order), features (sparse, activation ≠ 0), the behaviour
    scores, and what read them (`info`: model, sae, hook, position, behaviour, dtype)."""
    ids = np.asarray(scores.probe_ids)
    base = probes.select(["probe_id", "prompt", "category", "harmful", "refused", "content_hash"])
    base = base.append_column("probe_index", pa.array(np.arange(len(ids)), pa.int32()))
    features = pa.table({"probe_id": pa.array(ids[scores.coo_probe].tolist(), pa.string()),
                         "feature_id": pa.array(scores.coo_feature, pa.int32()),
                         "activation": pa.array(scores.coo_value, pa.float64())})
    behaviour = pa.table({"probe_id": pa.array(ids.tolist(), pa.string()),
                          "behaviour": pa.array(scores.behaviour, pa.float64()),
                          "refusal_prob": pa.array(scores.refusal_prob, pa.float64()),
                          "refused": pa.array(scores.refused, pa.bool_()),
                          "refused_source": pa.array([scores.refused_source] * len(ids), pa.string())})
    readout = pa.Table.from_pylist([{**info, "n_probes": len(ids)}])
    return {"probes": base, "features": features, "behaviour_scores": behaviour, "readout_info": readout}


def read_probe_readout(con) -> tuple[ProbeScores, pa.Table, dict]:
    """The probe readout back from the warehouse, exactly as measured (float64 values, file order).

    Returns the `ProbeScores`, the probes table (prompts, categories) and the readout info row.
    The policy is refitted from these in milliseconds, so no fitted object needs storing.
    """
    probes = con.sql("SELECT * EXCLUDE (probe_index) FROM smda.probes ORDER BY probe_index").to_arrow_table()
    if probes.num_rows == 0:
        raise SMDAError("the warehouse holds no probe readout yet: materialise `probes` first")
    behaviour = con.sql("SELECT b.behaviour, b.refusal_prob, b.refused, b.refused_source FROM smda.behaviour_scores b "
                        "JOIN smda.probes p USING (probe_id) ORDER BY p.probe_index").to_arrow_table()
    coo = con.sql("SELECT p.probe_index, f.feature_id, f.activation FROM smda.features f JOIN smda.probes p USING (probe_id) "
                  "ORDER BY p.probe_index, f.feature_id").to_arrow_table()
    maxima = con.sql("SELECT p.probe_index, m.feature_id, m.activation, m.token_index FROM smda.feature_maxima m JOIN smda.probes p "
                     "USING (probe_id) ORDER BY p.probe_index, m.feature_id").to_arrow_table()
    info = con.sql("SELECT * FROM smda.readout_info").to_arrow_table().to_pylist()
    if behaviour.num_rows != probes.num_rows or not info:
        raise SMDAError("the warehouse's probe readout is incomplete: materialise `probes` again")
    source = behaviour["refused_source"].to_pylist()
    scores = ProbeScores(
        probe_ids=np.asarray(probes["probe_id"].to_pylist()), category=np.asarray(probes["category"].to_pylist()),
        harmful=np.asarray(probes["harmful"].to_pylist(), dtype=bool),
        refused=np.asarray(behaviour["refused"].to_pylist(), dtype=bool), refused_source=source[0],
        behaviour=behaviour["behaviour"].to_numpy(), refusal_prob=behaviour["refusal_prob"].to_numpy(),
        coo_probe=coo["probe_index"].to_numpy().astype(np.int64), coo_feature=coo["feature_id"].to_numpy().astype(np.int64),
        coo_value=coo["activation"].to_numpy(),
        maxima=(maxima["probe_index"].to_numpy().astype(np.int64), maxima["feature_id"].to_numpy().astype(np.int64),
                maxima["activation"].to_numpy(), maxima["token_index"].to_numpy().astype(np.int64)) if maxima.num_rows else None)
    return scores, probes, info[0]


def policy_tables(policy: Policy, scores, labels: Sequence[FeatureLabel], *, preset: str, model: str, sae: str, hook: str,
                  position: str, behaviour: str, dtype: str, formula: str, policy_version: str | None = None,
                  score_name: str = score_names.DEFAULT) -> dict[str, pa.Table]:
    """policy_features, policy_fit, feature_labels, probe_contributions and probe_scores (with predictions).

    policy_fit records `policy_version` (the policy's data version, which the pair rows computed against it
    carry), the fit's warnings (`Policy.warnings`, one per line; NULL when there are none) and the name of the
    recommended pair score.
    """
    ids = np.asarray(scores.probe_ids)
    k = policy.k
    mean = policy.standardiser.mean if policy.standardiser is not None else policy.X.mean(0)
    std = policy.standardiser.std if policy.standardiser is not None else np.ones(k)
    stat = np.asarray(policy.selection.statistic, dtype=float)
    features = pa.table({
        "feature_id": pa.array(policy.feature_ids, pa.int32()),
        "rank": pa.array(np.argsort(np.argsort(-np.abs(policy.coef), kind="stable"), kind="stable") + 1, pa.int32()),
        "coef": pa.array(policy.coef, pa.float64()),
        "mean": pa.array(mean, pa.float64()),
        "std": pa.array(std, pa.float64()),
        "direction": pa.array(np.where(stat > 0, "harmful", "harmless").tolist(), pa.string()),
        "statistic": pa.array(stat, pa.float64()),
        "statistic_name": pa.array([policy.selection.statistic_name] * k, pa.string()),
    })
    fit = pa.table({
        "lambda": [float(policy.lam)], "r2": [float(policy.r2)], "loo_r2": [float(policy.loo_r2)],
        "accuracy": [float(policy.accuracy)], "majority_baseline": [float(policy.majority_baseline)],
        "intercept": [float(policy.intercept)], "threshold": [float(policy.threshold)],
        "n_probes": pa.array([policy.n], pa.int32()), "k": pa.array([k], pa.int32()),
        "preset": [preset], "model": [model], "sae": [sae], "hook": [hook], "position": [position],
        "behaviour": [behaviour], "design": [policy.settings.design], "dtype": [dtype], "formula": [formula],
        "fitted_at": pa.array([dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)], pa.timestamp("us")),
        "policy_version": pa.array([policy_version], pa.string()),
        "warnings": pa.array(["\n".join(policy.warnings) or None], pa.string()),
        "score_name": [score_name],
    })
    label_table = pa.table({
        "feature_id": pa.array([l.feature_id for l in labels], pa.int32()),
        "label": [l.label for l in labels], "source": [l.source for l in labels],
        "top_probes": [json.dumps([str(ids[i]) for i in l.top_probes]) for l in labels],
    })
    contrib = policy.Z * policy.coef[None, :]
    rows, cols = (a.ravel() for a in np.indices(contrib.shape))  # every (probe, policy feature), row-major
    contributions = pa.table({"probe_id": pa.array(ids[rows].tolist(), pa.string()),
                              "feature_id": pa.array(policy.feature_ids[cols], pa.int32()),
                              "contribution": pa.array(contrib[rows, cols], pa.float64())})
    probe_scores = pa.table({
        "probe_id": pa.array(ids.tolist(), pa.string()),
        "behaviour": pa.array(scores.behaviour, pa.float64()),
        "refusal_prob": pa.array(scores.refusal_prob, pa.float64()),
        "refused": pa.array(scores.refused, pa.bool_()),
        "refused_source": pa.array([scores.refused_source] * len(ids), pa.string()),
        "predicted": pa.array(policy.predicted, pa.float64()),
        "heldout": pa.array(policy.heldout, pa.bool_()),
    })
    return {"policy_features": features, "policy_fit": fit, "feature_labels": label_table,
            "probe_contributions": contributions, "probe_scores": probe_scores}


def _with_batch(table: pa.Table, batch_id: str) -> pa.Table:
    return table.add_column(1, "batch_id", pa.array([batch_id] * table.num_rows, pa.string()))


def pair_tables(batch_id: str, shifts, attr, policy: Policy, probe_ids: Sequence[str], *, delta_x: str = "exact",
                include_shifts: bool = True, policy_version: str | None = None) -> dict[str, pa.Table]:
    """pair_attribution, pair_summary, pair_group_effects, pair_group_shift and (optionally) pair_shifts of one batch.

    Every table's rows carry `policy_version`, the version of the policy they were computed against.
    """
    out = {name: _with_batch(t, batch_id) for name, t in attr.to_arrow().items()}
    summary = out["pair_summary"]
    summary = summary.set_column(summary.schema.get_field_index("intended_features"), "intended_features",
                                 pa.array([json.dumps([int(x) for x in v]) for v in summary["intended_features"].to_pylist()]))
    summary = summary.append_column("seconds", pa.array(shifts.seconds, pa.float64()))
    summary = summary.append_column("method", pa.array([attr.primary] * summary.num_rows, pa.string()))
    out["pair_summary"] = summary
    if include_shifts:
        m, n, k = shifts.dX_exact.shape
        dz = policy.shift(shifts.dX(delta_x)).reshape(m * n * k)
        pair_idx = np.repeat(np.arange(m), n * k)
        probe_idx = np.tile(np.repeat(np.arange(n), k), m)
        feat_idx = np.tile(np.arange(k), m * n)
        pids = np.asarray(shifts.pair_ids)
        out["pair_shifts"] = pa.table({
            "pair_id": pa.array(pids[pair_idx].tolist(), pa.string()),
            "batch_id": pa.array([batch_id] * len(dz), pa.string()),
            "probe_id": pa.array(np.asarray(probe_ids)[probe_idx].tolist(), pa.string()),
            "feature_id": pa.array(policy.feature_ids[feat_idx], pa.int32()),
            "dz": pa.array(dz, pa.float64()),
            "dy": pa.array(shifts.dY[pair_idx, probe_idx], pa.float64()),
        })
    return {name: t.append_column("policy_version", pa.array([policy_version] * t.num_rows, pa.string()))
            for name, t in out.items()}


def tier_tables(batch_id: str, tables: list[dict[str, pa.Table]]) -> dict[str, pa.Table]:
    """The tables of several tiers of one batch, concatenated by name (each row keeps its `method`)."""
    out: dict[str, list[pa.Table]] = {}
    for t in tables:
        for name, table in t.items():
            out.setdefault(name, []).append(table)
    return {name: pa.concat_tables(ts, promote_options="permissive") if len(ts) > 1 else ts[0] for name, ts in out.items()}


def screen_summary_table(batch_id: str, pair_ids: Sequence[str], scores: dict, seconds: np.ndarray, *,
                         policy_version: str | None = None) -> pa.Table:
    """pair_summary rows of the screen tier (method 'screen'): its scores, every other column NULL."""
    m = len(pair_ids)
    return pa.table({"pair_id": pa.array(list(pair_ids), pa.string()), "batch_id": pa.array([batch_id] * m, pa.string()),
                     **{k: pa.array(np.asarray(v)) for k, v in scores.items()},
                     "seconds": pa.array(np.asarray(seconds, dtype=np.float64)),
                     "method": pa.array(["screen"] * m, pa.string()), "sample": pa.array([False] * m, pa.bool_()),
                     "policy_version": pa.array([policy_version] * m, pa.string())})


def agreement_table(batch_id: str, rows, *, policy_version: str | None = None) -> pa.Table:
    """method_agreement rows of one batch (a DataFrame from `attribution.agreement.method_agreement`)."""
    table = pa.Table.from_pandas(rows.astype({"feature_id": "Int32"}), preserve_index=False)
    table = table.add_column(0, "batch_id", pa.array([batch_id] * table.num_rows, pa.string()))
    return table.append_column("policy_version", pa.array([policy_version] * table.num_rows, pa.string()))


def check_stored_policy(con, policy: Policy) -> None:
    """The refitted policy must be the one the warehouse shows (same features, same β to 1e-12)."""
    stored = con.sql("SELECT feature_id, coef FROM smda.policy_features").to_arrow_table().to_pylist()
    by_id = {int(r["feature_id"]): r["coef"] for r in stored}
    ours = dict(zip(policy.feature_ids.tolist(), policy.coef.tolist()))
    if set(by_id) != set(ours) or any(abs(by_id[f] - c) > 1e-12 * max(1.0, abs(c)) for f, c in ours.items()):
        raise SMDAError("the stored policy differs from the one the current readout and settings give: "
                        "materialise `policy` again (smda ingest does) before the pair steps")


def stored_policy_version(con) -> str | None:
    """The version of the policy the warehouse shows (`policy_fit.policy_version`; None before one is recorded)."""
    rows = con.sql("SELECT * FROM smda.policy_fit").to_arrow_table()
    if rows.num_rows == 0 or "policy_version" not in rows.column_names:
        return None
    return rows["policy_version"][0].as_py()
