"""Figures of the public views: the policy's coefficients, refusal per category, the ΔX/ΔY pathways
of the strongest attributions, and cross-feature interference.

Each figure function takes the rows of one view (a pandas DataFrame, as `smda query` would
return them) and returns a matplotlib Figure, so a notebook can draw the same figure from its
own query. `write_plots` reads the views of a warehouse and writes one PNG per figure. The
object-oriented matplotlib API (no pyplot) keeps this free of a display and of global state.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

POSITIVE, NEGATIVE, NEUTRAL = "#c0392b", "#2471a3", "#7f8c8d"
PATHWAY_COLOURS = {"via_x": "#e67e22", "via_y": "#8e44ad", "via_xy": "#95a5a6"}


def _short(text: object, width: int = 48) -> str:
    text = "" if text is None or text != text else str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _rows_figure(n_rows: int, width: float = 9.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, max(2.5, 0.32 * n_rows + 1.2)), layout="constrained")
    return fig, fig.add_subplot()


def policy_coefficients(policy: pd.DataFrame, top: int = 20) -> Figure:
    """Bars of the `top` largest |coef| of `v_policy`: what the symbolic policy reads, and with which sign."""
    rows = policy.reindex(policy["coef"].abs().sort_values(ascending=False).index).head(top).iloc[::-1]
    fig, ax = _rows_figure(len(rows))
    ax.barh(range(len(rows)), rows["coef"], color=[POSITIVE if c > 0 else NEGATIVE for c in rows["coef"]])
    ax.set_yticks(range(len(rows)), [f"{f} {_short(label)}" for f, label in zip(rows["feature_id"], rows["label"])],
                  fontsize=8)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("coefficient on the standardised feature (+ refuses more)")
    ax.set_title(f"Symbolic policy: the {len(rows)} largest coefficients")
    return fig


def category_refusal(gaps: pd.DataFrame) -> Figure:
    """Mean refusal_prob per category of `v_category_gaps`, harmful ones in red: the gaps at a glance."""
    rows = gaps.sort_values(["harmful", "mean_refusal_prob"], ascending=[False, True]).iloc[::-1]
    fig, ax = _rows_figure(len(rows), width=7.0)
    ax.barh(range(len(rows)), rows["mean_refusal_prob"],
            color=[POSITIVE if h else NEUTRAL for h in rows["harmful"]])
    ax.set_yticks(range(len(rows)), [f"{c} (n={n})" for c, n in zip(rows["category"], rows["n"])], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean refusal_prob (red: harmful categories)")
    ax.set_title("Refusal per probe category")
    return fig


def pathways(attribution: pd.DataFrame, top: int = 15) -> Figure:
    """ΔX, ΔY and cross-term parts of the `top` largest |Δβ| in `v_pair_attribution`.

    Δβ = via_x + via_y + via_xy: a bar pair shows whether a pair moved the policy by changing
    the feature's activations (ΔX) or the behaviour on probes where it is active (ΔY).
    """
    rows = attribution.reindex(attribution["delta_beta"].abs().sort_values(ascending=False).index).head(top).iloc[::-1]
    fig, ax = _rows_figure(len(rows) * 1.6)
    height = 0.27
    for offset, part in zip((height, 0.0, -height), ("via_x", "via_y", "via_xy")):
        ax.barh([i + offset for i in range(len(rows))], rows[part], height=height, color=PATHWAY_COLOURS[part],
                label={"via_x": "ΔX pathway", "via_y": "ΔY pathway", "via_xy": "ΔX·ΔY"}[part])
    ax.scatter(rows["delta_beta"], range(len(rows)), marker="|", s=160, color="black", label="Δβ", zorder=3)
    ax.set_yticks(range(len(rows)), [f"{p} · {f} {_short(label, 36)}"
                                     for p, f, label in zip(rows["pair_id"], rows["feature_id"], rows["label"])],
                  fontsize=8)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("contribution to Δβ (coefficient shift after one step on the pair)")
    ax.set_title(f"Pathways of the {len(rows)} largest attributions (pair · feature)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def interference(summary: pd.DataFrame) -> Figure:
    """Each pair of `v_pair_summary`: correctness_shift against interference, flagged pairs named in red."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    flagged = summary["flagged"].fillna(False).astype(bool)
    ax.scatter(summary.loc[~flagged, "correctness_shift"], summary.loc[~flagged, "interference"], color=NEUTRAL,
               label="dominant feature intended")
    ax.scatter(summary.loc[flagged, "correctness_shift"], summary.loc[flagged, "interference"], color=POSITIVE,
               label="flagged: dominant feature not intended")
    for _, r in summary[flagged].nlargest(12, "interference").iterrows():
        ax.annotate(str(r["pair_id"]), (r["correctness_shift"], r["interference"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("correctness_shift (+ moves refusal toward correct on probes)")
    ax.set_ylabel("interference (share of |Δβ| outside the intended features)")
    ax.set_title(f"Cross-feature interference: {int(flagged.sum())} of {len(summary)} pairs flagged")
    ax.legend(fontsize=8)
    return fig


QUERIES = {
    "policy_coefficients": ("SELECT feature_id, coef, label FROM smda.v_policy", policy_coefficients),
    "category_refusal": ("SELECT category, harmful, n, mean_refusal_prob FROM smda.v_category_gaps", category_refusal),
    # Each pair under its primary method (the one its summary reports).
    "pathways": ("""SELECT a.pair_id, a.feature_id, a.label, a.delta_beta, a.via_x, a.via_y, a.via_xy
                    FROM smda.v_pair_attribution a JOIN smda.v_pair_summary s
                      ON s.pair_id = a.pair_id AND s.batch_id IS NOT DISTINCT FROM a.batch_id AND s.method = a.method
                    WHERE a.delta_beta IS NOT NULL""", pathways),
    "interference": ("SELECT pair_id, correctness_shift, interference, flagged FROM smda.v_pair_summary", interference),
}
"""Figure name → (the view rows it draws, the function that draws them)."""


def write_plots(warehouse: str | Path, out_dir: str | Path, *, dpi: int = 120) -> dict[str, Path]:
    """One PNG per figure of :data:`QUERIES` whose view has rows; returns name → file."""
    from smda_core.store.query import query

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (sql, draw) in QUERIES.items():
        rows = query(warehouse, sql).to_pandas()
        if rows.empty:
            continue
        path = out / f"{name}.png"
        tmp = path.with_name(path.name + ".tmp.png")
        draw(rows).savefig(tmp, dpi=dpi)
        tmp.replace(path)  # a reader never sees half a file
        written[name] = path
    return written
