"""The report's interactive figures (Plotly), one function per figure, each from the rows of one section.

Plotly draws SVG in the browser from a JSON spec, so the page needs its JavaScript once
(embedded by :mod:`smda_core.report.html`, no network) and each figure is a few kilobytes of
data: a 2,000-pair scatter stays small. Hover text carries what a researcher wants next to a
point: a pair's prompt and response, a feature's label and top example.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

POSITIVE, NEGATIVE, NEUTRAL, HIGHLIGHT = "#c0392b", "#2471a3", "#95a5a6", "#e67e22"
ACTIVATION, WEIGHT = "#e67e22", "#8e44ad"
KIND_COLOURS = {"harmful_refusal": "#2471a3", "harmless_compliance": "#27ae60", "harmful_compliance": "#c0392b",
                "harmless_refusal": "#8e44ad", "harmless_trigger": "#e67e22"}
LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=50, b=40), font=dict(size=12))


def short(text: object, width: int = 60) -> str:
    """One line of at most `width` characters, HTML-escaped for hover text and tick labels."""
    text = "" if text is None or text != text else " ".join(str(text).split())
    return html.escape(text if len(text) <= width else text[: width - 1] + "…")


def policy_coefficients(policy: pd.DataFrame, top: int = 25) -> go.Figure:
    """Bars of the `top` largest |coef|: what the symbolic policy reads, with which sign; hover shows the feature's
    strongest example (its top token marked «so»)."""
    rows = policy.reindex(policy["coef"].abs().sort_values(ascending=False).index).head(top).iloc[::-1]
    names = [f"{f} {short(label, 44)}" for f, label in zip(rows["feature_id"], rows["label"])]
    hover = [f"feature {f}<br>{short(label, 90)}<br>coef {c:+.4f}<br>top example: {short(ex, 90)}"
             for f, label, c, ex in zip(rows["feature_id"], rows["label"], rows["coef"], rows.get("top_example", rows["label"]))]
    fig = go.Figure(go.Bar(x=rows["coef"], y=names, orientation="h", hovertext=hover, hoverinfo="text",
                           marker_color=[POSITIVE if c > 0 else NEGATIVE for c in rows["coef"]]))
    fig.update_layout(**LAYOUT, height=max(300, 22 * len(rows) + 90),
                      title=f"The {len(rows)} largest coefficients (red: more refusal, blue: less)",
                      xaxis_title="coefficient (design-matrix units)", yaxis=dict(automargin=True))
    return fig


def category_gaps(categories: pd.DataFrame) -> go.Figure:
    """Mean refusal_prob and the policy's mean prediction per probe category, harmful and harmless in two panels;
    the category with the largest negative gap among harmful ones (the most under-refused) is drawn in orange."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("harmful categories", "harmless categories"),
                        horizontal_spacing=0.18)
    lowest = _most_under_refused(categories)
    for col, harmful in ((1, True), (2, False)):
        rows = categories[categories["harmful"].astype(bool) == harmful].sort_values("mean_refusal_prob", ascending=False)
        if rows.empty:
            continue
        labels = [f"{c} (n={n})" for c, n in zip(rows["category"], rows["n"])]
        colours = [HIGHLIGHT if harmful and c == lowest else (POSITIVE if harmful else NEUTRAL) for c in rows["category"]]
        hover = [f"{short(c)}<br>mean refusal_prob {m:.3f}<br>gap {g:+.3f}<br>policy predicts {p:.3f}<br>{short(t, 120)}"
                 for c, m, g, p, t in zip(rows["category"], rows["mean_refusal_prob"], rows["refusal_gap"],
                                          rows["mean_predicted_prob"], rows["top_features"])]
        fig.add_trace(go.Bar(x=rows["mean_refusal_prob"], y=labels, orientation="h", marker_color=colours,
                             name="measured refusal_prob", hovertext=hover, hoverinfo="text", showlegend=col == 1),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=rows["mean_predicted_prob"], y=labels, mode="markers", name="policy's prediction",
                                 marker=dict(symbol="diamond", size=10, color="black"), showlegend=col == 1,
                                 hovertemplate="policy predicts %{x:.3f}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(range=[0, 1], title_text="mean refusal_prob", row=1, col=col)
    title = "Refusal per probe category" + (f": {html.escape(lowest)} is the most under-refused harmful category"
                                             if lowest else "")
    fig.update_layout(**{**LAYOUT, "margin": dict(l=10, r=10, t=90, b=40)}, height=max(340, 26 * len(categories) // 2 + 180),
                      title=dict(text=title, y=0.97), legend=dict(orientation="h", y=-0.28))
    fig.update_yaxes(automargin=True)
    return fig


def _most_under_refused(categories: pd.DataFrame) -> str | None:
    harmful = categories[categories["harmful"].astype(bool)]
    return None if harmful.empty else str(harmful.loc[harmful["refusal_gap"].idxmin(), "category"])


def pair_scores(pairs: pd.DataFrame, score_name: str) -> go.Figure:
    """Every pair: the recommended score against the paper's alignment, one colour per `kind` where pairs carry
    one (bad kinds in warm colours); hover shows the pair's prompt and response."""
    fig = go.Figure()
    groups = pairs.groupby(pairs["kind"].astype(str), sort=True) if "kind" in pairs else [("pairs", pairs)]
    for kind, rows in groups:
        hover = [f"<b>{short(p, 40)}</b> ({short(k, 30)})<br>score {s:.3g} · alignment {a:.3g}<br>"
                 f"prompt: {short(q, 110)}<br>response: {short(r, 110)}"
                 for p, k, s, a, q, r in zip(rows["pair_id"], [kind] * len(rows), rows["score"], rows["alignment"],
                                             rows["prompt"], rows["response"])]
        fig.add_trace(go.Scatter(x=rows["alignment"], y=rows["score"], mode="markers", name=kind,
                                 marker=dict(size=8, color=KIND_COLOURS.get(kind, NEUTRAL), opacity=0.8,
                                             line=dict(width=0.5, color="white")),
                                 hovertext=hover, hoverinfo="text"))
    fig.add_hline(y=0, line_width=0.6, line_color="black")
    fig.update_layout(**LAYOUT, height=520, title=f"Pairs: recommended score ({html.escape(score_name)}) against the paper's alignment",
                      xaxis_title="alignment = Σ Δβ·β (the paper's score)",
                      yaxis_title=f"{html.escape(score_name)} (higher = better to keep)")
    return fig


def mechanism_bars(mechanism: pd.DataFrame, pairs: pd.DataFrame) -> go.Figure:
    """For each of the most harmful pairs, its top policy features' activation part (ΔX: the pair changes what
    the model reads) and weight part (Δβ: it changes how refusal depends on the feature), side by side."""
    rows = mechanism[mechanism["source"] == "policy"].copy()
    order = [p for p in pairs["pair_id"] if p in set(rows["pair_id"])]
    rows["pair_id"] = pd.Categorical(rows["pair_id"], order, ordered=True)
    rows = rows.sort_values(["pair_id", "rank"])
    y = [f"{p} · {f} {short(label, 36)}" for p, f, label in zip(rows["pair_id"], rows["feature_id"], rows["label"])]
    fig = go.Figure()
    for part, colour, name in (("activation_part", ACTIVATION, "activation part (ΔX)"),
                               ("weight_part", WEIGHT, "weight part (Δβ)")):
        fig.add_trace(go.Bar(x=rows[part], y=y, orientation="h", name=name, marker_color=colour,
                             hovertemplate="%{y}<br>" + name + " %{x:.3g}<extra></extra>"))
    fig.update_layout(**LAYOUT, barmode="relative", height=max(320, 16 * len(rows) + 120),
                      title="Most harmful pairs: the policy features their score flows through",
                      yaxis=dict(autorange="reversed", automargin=True, tickfont=dict(size=10)),
                      legend=dict(orientation="h", y=-0.06))
    return fig


def effect_heatmap(heatmap: pd.DataFrame) -> go.Figure:
    """Pair × policy feature heatmap of the largest effects (activation + weight part of the recommended score):
    which features a pair acts through, and which pairs share a feature."""
    grid = heatmap.pivot_table(index="pair_id", columns="feature_id", values="effect", aggfunc="sum").fillna(0.0)
    labels = heatmap.drop_duplicates("feature_id").set_index("feature_id")["label"]
    cols = [f"{f} {short(labels.get(f), 24)}" for f in grid.columns]
    bound = float(grid.abs().to_numpy().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=cols, y=[str(p) for p in grid.index], zmin=-bound, zmax=bound,
                               colorscale="RdBu", colorbar=dict(title="effect"),
                               hovertemplate="pair %{y}<br>feature %{x}<br>effect %{z:.3g}<extra></extra>"))
    fig.update_layout(**LAYOUT, height=max(360, 18 * len(grid) + 200),
                      title="Largest effects: pair × policy feature (blue lowers the score: harm)",
                      xaxis=dict(tickangle=-40, automargin=True), yaxis=dict(automargin=True))
    return fig


def curation_bars(curation: pd.DataFrame) -> go.Figure:
    """F1 of each model variant of the latest curation experiment (its mean over the retraining seeds): the
    curated set against the oracle (a perfect attribution, and each bad kind alone) and random removals."""
    latest = curation[curation["experiment_id"] == curation["experiment_id"].iloc[-1]]
    colours = [HIGHLIGHT if v == "curated" else (POSITIVE if v.startswith("oracle") else NEUTRAL)
               for v in latest["variant"]]
    fig = go.Figure(go.Bar(x=latest["variant"], y=latest["f1"], marker_color=colours,
                           hovertemplate="%{x}<br>F1 %{y:.4f}<extra></extra>"))
    lo, hi = float(latest["f1"].min()), float(latest["f1"].max())
    fig.update_layout(**LAYOUT, height=360, title=f"Curation ({html.escape(str(latest['rule'].iloc[0]))}): "
                      "F1 against the oracle and random removals",
                      yaxis=dict(title="F1 on held-out probes", range=[max(0.0, lo - 0.05), min(1.0, hi + 0.02)]))
    return fig
