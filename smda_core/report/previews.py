"""Small PNG previews of the key figures as Markdown, for the Dagster UI's asset metadata.

Dagster renders a Markdown metadata value, images included, in the asset's page; an image
given as a data URI needs no file server. Previews are drawn with matplotlib (no browser
needed where assets run) at a low resolution, so that each stays a few tens of kilobytes in
Dagster's event log. The interactive versions are in the HTML report.
"""

from __future__ import annotations

import base64
import io

import pandas as pd
from matplotlib.figure import Figure

from smda_core.report import plots

DPI = 90
KIND_COLOURS = {"harmful_refusal": "#2471a3", "harmless_compliance": "#27ae60", "harmful_compliance": "#c0392b",
                "harmless_refusal": "#8e44ad", "harmless_trigger": "#e67e22"}


def png_markdown(fig: Figure, alt: str, *, dpi: int = DPI) -> str:
    """The figure as a Markdown image with a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})"


def pair_scores(summary: pd.DataFrame, score_name: str) -> Figure:
    """Each pair's recommended score against the paper's alignment, one colour per `kind` where pairs carry one."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    groups = summary.groupby(summary["kind"].astype(str)) if "kind" in summary else [("pairs", summary)]
    for kind, rows in groups:
        ax.scatter(rows["alignment"], rows["score"], s=14, label=kind, color=KIND_COLOURS.get(kind, plots.NEUTRAL))
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("alignment (the paper's score)")
    ax.set_ylabel(f"{score_name} (higher = keep)")
    ax.set_title(f"{len(summary)} pairs: recommended score against alignment")
    ax.legend(fontsize=7)
    return fig


def policy_markdown(policy: pd.DataFrame, formula: str) -> str:
    """The policy's formula and its coefficient bars (columns feature_id, coef, label)."""
    return f"`{formula}`\n\n" + png_markdown(plots.policy_coefficients(policy), "policy coefficients")


def pairs_markdown(summary: pd.DataFrame, score_name: str) -> str:
    """The pairs' score-against-alignment scatter (columns score, alignment and, where present, kind)."""
    return png_markdown(pair_scores(summary, score_name), "pair scores")


def report_markdown(categories: pd.DataFrame, summary: pd.DataFrame, score_name: str) -> str:
    """The report's two headline figures: refusal per category and the pairs' scores."""
    parts = []
    if not categories.empty:
        parts.append(png_markdown(plots.category_refusal(categories), "refusal per category"))
    if not summary.empty:
        parts.append(pairs_markdown(summary, score_name))
    return "\n\n".join(parts)
