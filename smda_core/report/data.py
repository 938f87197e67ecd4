"""What the report shows, read from the public views of one warehouse (read-only, one connection).

The report is a reading of the views, never of the tables behind them, so that it shows what a
user's own `smda query` would show. Each section is one small query; a view a warehouse does not
have yet (no curation run, no tier agreement) gives an empty frame and the section says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from smda_core.attribution.score_names import DEFAULT as DEFAULT_SCORE

TOP_HARMFUL = 12
"""Pairs shown with their mechanism: the lowest recommended scores (the pairs to drop first)."""
HEATMAP_PAIRS, HEATMAP_FEATURES = 30, 20
"""Size of the pair × feature heatmap: the pairs and features with the largest effects."""
TEXT_WIDTH = 240
"""Characters of a pair's prompt and response carried into hover text (the tables carry them whole)."""


@dataclass
class ReportData:
    """The rows of every section; empty frames where the warehouse holds nothing for a section."""

    fit: dict
    policy: pd.DataFrame
    categories: pd.DataFrame
    pairs: pd.DataFrame
    separation: pd.DataFrame
    mechanism: pd.DataFrame
    landing: pd.DataFrame
    heatmap: pd.DataFrame
    interference: pd.DataFrame
    interference_features: pd.DataFrame
    agreement: pd.DataFrame
    validation: pd.DataFrame
    curation: pd.DataFrame
    warehouse: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def score_name(self) -> str:
        return str(self.fit.get("score_name") or DEFAULT_SCORE)

    @property
    def has_kind(self) -> bool:
        return "kind" in self.pairs and self.pairs["kind"].notna().any()


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    """The rows of one SELECT, or an empty frame when a view it reads does not exist in this warehouse."""
    try:
        return con.execute(sql, params or []).df()
    except duckdb.CatalogException:
        return pd.DataFrame()


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    rows = con.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = 'smda' AND table_name = ?",
                       [view]).fetchall()
    return {r[0] for r in rows}


def predicted_probability(predicted: pd.Series, behaviour: str) -> pd.Series:
    """The policy's prediction of a probe's behaviour in refusal-probability units, so that it sits beside
    `refusal_prob`: exp for log-probabilities, the logistic for log-odds and contrasts, clipped for a probability."""
    x = predicted.astype(float)
    if behaviour == "log_refusal":
        return np.exp(np.minimum(x, 0.0))
    if behaviour == "refusal_prob":
        return x.clip(0.0, 1.0)
    return 1.0 / (1.0 + np.exp(-x))


def read_fit(con) -> dict:
    rows = _frame(con, "SELECT * FROM smda.v_policy_fit LIMIT 1")
    return {} if rows.empty else rows.iloc[0].to_dict()


def read_policy(con) -> pd.DataFrame:
    return _frame(con, "SELECT feature_id, rank, coef, label, direction, top_example FROM smda.v_policy ORDER BY rank")


def read_categories(con, behaviour: str) -> pd.DataFrame:
    """Mean refusal_prob and the policy's mean prediction (probability units) per (category, harmful), with the
    gap of v_category_gaps (the category's mean minus the mean over categories of the same harmful flag)."""
    gaps = _frame(con, "SELECT category, harmful, n, mean_refusal_prob, refusal_gap, top_features FROM smda.v_category_gaps")
    probes = _frame(con, "SELECT category, harmful, predicted FROM smda.v_probe_scores")
    if gaps.empty or probes.empty:
        return gaps
    probes["predicted_prob"] = predicted_probability(probes["predicted"], behaviour)
    pred = probes.groupby(["category", "harmful"], dropna=False, as_index=False)["predicted_prob"].mean()
    out = gaps.merge(pred.rename(columns={"predicted_prob": "mean_predicted_prob"}), on=["category", "harmful"], how="left")
    return out.sort_values(["harmful", "mean_refusal_prob"], ascending=[False, True], ignore_index=True)


def read_pairs(con) -> pd.DataFrame:
    """Every pair's scores with its text and, where the pairs arrived with them, `kind`, `harmful` and `category`."""
    extra = [c for c in ("kind", "harmful", "category") if c in _columns(con, "v_sft_pairs")]
    cols = ", ".join(f"p.{c}" for c in extra)
    return _frame(con, f"""
        SELECT s.pair_id, s.batch_id, s.score, s.alignment, s.alignment_refit, s.alignment_linear, s.keep_score,
               s.margin_shift, s.local_shift, s.worst_group_shift, s.specific_shift, s.harm_shift,
               s.worst_group, s.screen_consistency, s.correctness_shift, s.dy_harmful, s.dy_harmless,
               s.interference, s.interference_z, s.flagged, s.harm_feature, s.harm_label, p.prompt, p.response
               {', ' + cols if cols else ''}
        FROM smda.v_pair_summary s JOIN smda.v_sft_pairs p USING (pair_id, batch_id)
        ORDER BY s.score, s.pair_id""")


def read_separation(pairs: pd.DataFrame) -> pd.DataFrame:
    """AUC of every score for every bad kind (needs the pairs' `kind` and `harmful`): the product's own table."""
    if not {"kind", "harmful"} <= set(pairs.columns) or pairs["kind"].isna().all():
        return pd.DataFrame()
    from smda_core.attribution.separation import separation_table

    return separation_table(pairs)


def read_mechanism(con, pair_ids: list[str], score_name: str) -> pd.DataFrame:
    """For the given pairs: the policy features their recommended score flows through (activation and weight
    parts) and the features where their harm lands (landing)."""
    if not pair_ids:
        return pd.DataFrame()
    return _frame(con, """
        SELECT pair_id, score, feature_id, label, activation_part, weight_part, share, rank, source, top_probe
        FROM smda.v_pair_mechanism
        WHERE pair_id IN (SELECT unnest(?::VARCHAR[]))
          AND ((score = ? AND source = 'policy') OR (score = 'harm' AND source = 'landing'))
          AND rank BETWEEN 1 AND 5
        ORDER BY pair_id, source, rank""", [pair_ids, score_name])


def read_landing(con, pair_ids: list[str]) -> pd.DataFrame:
    """For the given pairs: the probe categories where their step does the most harm, three per pair.

    Harm is signed by what the probes should get: a drop of refusal on a harmful category, a rise on a harmless
    one (`harm` = −Δp on harmful categories, +Δp on harmless ones, Δp the mean shift of refusal_prob); only
    categories with harm > 0 are kept.
    """
    if not pair_ids:
        return pd.DataFrame()
    return _frame(con, """
        WITH kinds AS (SELECT DISTINCT category, harmful FROM smda.v_probe_scores),
        g AS (
            SELECT s.pair_id, k.category, k.harmful, s.n_probes, s.dp,
                   CASE WHEN k.harmful THEN -s.dp ELSE s.dp END AS harm
            FROM smda.v_pair_group_shift s JOIN kinds k ON s."group" = 'category:' || k.category
            WHERE s.pair_id IN (SELECT unnest(?::VARCHAR[]))),
        r AS (SELECT *, row_number() OVER (PARTITION BY pair_id ORDER BY harm DESC, category) AS r FROM g WHERE harm > 0)
        SELECT pair_id, category, harmful, n_probes, dp, harm FROM r WHERE r <= 3 ORDER BY pair_id, r""", [pair_ids])


def read_heatmap(con, score_name: str) -> pd.DataFrame:
    """Long rows (pair, feature, effect = activation + weight part) for the pairs and policy features with the
    largest |effect| on the recommended score."""
    return _frame(con, """
        WITH m AS (
            SELECT pair_id, feature_id, label, activation_part + weight_part AS effect
            FROM smda.v_pair_mechanism WHERE score = ? AND source = 'policy' AND feature_id >= 0),
        tp AS (SELECT pair_id FROM m GROUP BY pair_id ORDER BY max(abs(effect)) DESC, pair_id LIMIT ?),
        tf AS (SELECT feature_id FROM m GROUP BY feature_id ORDER BY max(abs(effect)) DESC, feature_id LIMIT ?)
        SELECT m.* FROM m JOIN tp USING (pair_id) JOIN tf USING (feature_id)""",
                  [score_name, HEATMAP_PAIRS, HEATMAP_FEATURES])


def read_interference(con) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The flagged pairs with prompt, response and metadata, and the features where their spillover lands."""
    flagged = _frame(con, """
        SELECT pair_id, interference, interference_z, worst_group, harm_feature, harm_label, score, alignment,
               prompt, response, metadata_json FROM smda.v_interference""")
    if flagged.empty:
        return flagged, pd.DataFrame()
    features = _frame(con, """
        SELECT pair_id, feature_id, label, weight_part AS harm, rank, top_probe FROM smda.v_pair_mechanism
        WHERE score = 'harm' AND source = 'landing' AND rank BETWEEN 1 AND 3 AND pair_id IN (SELECT pair_id FROM smda.v_interference)
        ORDER BY pair_id, rank""")
    return flagged, features


def read_report_data(warehouse: str | Path) -> ReportData:
    """Every section's rows from one read-only connection (the warehouse's shared lock held meanwhile)."""
    from smda_core.store.query import reading

    with reading(warehouse) as con:
        fit = read_fit(con)
        pairs = read_pairs(con)
        score_name = str(fit.get("score_name") or DEFAULT_SCORE)
        harmful = pairs.nsmallest(TOP_HARMFUL, "score")["pair_id"].astype(str).tolist() if not pairs.empty else []
        flagged, spill = read_interference(con)
        return ReportData(
            fit=fit, policy=read_policy(con), categories=read_categories(con, str(fit.get("behaviour") or "log_refusal")),
            pairs=pairs, separation=read_separation(pairs), mechanism=read_mechanism(con, harmful, score_name),
            landing=read_landing(con, harmful), heatmap=read_heatmap(con, score_name), interference=flagged,
            interference_features=spill,
            agreement=_frame(con, "SELECT * FROM smda.v_method_agreement"),
            validation=_frame(con, "SELECT \"check\", method, score, n, spearman, detail, created_at FROM smda.v_validation"),
            curation=_frame(con, "SELECT experiment_id, rule, variant, seeds, n_pairs, correctness, precision, recall, f1, f1_sd, "
                                 "refusal_accuracy, created_at FROM smda.v_curation ORDER BY created_at, experiment_id, variant"),
            warehouse=str(warehouse))
