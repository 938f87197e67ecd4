"""One self-contained HTML file of a warehouse: the policy, category gaps, pairs, mechanism, interference,
tiers and validation, readable offline and sendable to a colleague.

Plotly's JavaScript is embedded once at the top of the page (no CDN, no network request), each
figure is a small JSON spec drawn by it, and tables are plain HTML. Every text that comes from
the warehouse (prompts, responses, labels, metadata) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from smda_core.report import figures
from smda_core.report.data import TOP_HARMFUL, ReportData, read_report_data

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1200px;margin:auto;padding:0 24px 48px}
header{background:#1f2d3d;color:#fff;padding:18px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.8;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:8px 24px;z-index:10;font-size:14px}
nav a{margin-right:16px;color:#1f5f9f;text-decoration:none}
section{scroll-margin-top:44px;background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:20px 0;padding:12px 20px}
h2{font-size:19px;margin:8px 0 4px}h3{font-size:15px;margin:16px 0 4px}
.formula{font-family:ui-monospace,Menlo,monospace;background:#f4f6f8;padding:10px;border-radius:4px;
 overflow-x:auto;white-space:pre-wrap;font-size:13px}
.stats span{display:inline-block;margin:4px 14px 4px 0;font-size:14px}.stats b{color:#1f2d3d}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0;width:100%}
th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f4f6f8;position:sticky;top:38px}.scroll th{top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-size:13px}.empty{color:#999;font-style:italic}
.text{max-width:360px;white-space:pre-wrap}.scroll{max-height:520px;overflow:auto}
.chart{min-height:200px}
"""


@dataclass(frozen=True)
class ReportResult:
    """Where a report was written, how big it is and how long it took."""

    path: Path
    n_bytes: int
    seconds: float
    n_figures: int
    sections: tuple[str, ...]
    data: ReportData


def _num(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table(rows: pd.DataFrame, columns: Iterable[str] | None = None, *, text: Iterable[str] = (), limit: int = 500,
          scroll: bool = False) -> str:
    """An escaped HTML table of `rows` (numbers right-aligned, `text` columns wrapped); at most `limit` rows."""
    columns = [c for c in (columns or rows.columns) if c in rows.columns]
    if rows.empty or not columns:
        return '<p class="empty">nothing stored for this section</p>'
    text = set(text)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for record in rows[columns].head(limit).itertuples(index=False):
        cells = []
        for c, v in zip(columns, record):
            if c in text:
                cells.append(f'<td class="text">{html.escape("" if v is None or v != v else str(v))}</td>')
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{_num(v)}</td>')
            else:
                cells.append(f"<td>{_num(v.item() if hasattr(v, 'item') else v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">{len(rows) - limit:,} more rows in the warehouse</p>' if len(rows) > limit else ""
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"
    return f'<div class="scroll">{out}</div>' if scroll else out


class _Page:
    """Sections in order, each with its figures; figures are numbered so their divs have stable ids."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, list[str]]] = []
        self.n_figures = 0

    def section(self, key: str, title: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((key, title, parts))
        return parts

    def figure(self, fig) -> str:
        self.n_figures += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{self.n_figures}",
                          config={"displaylogo": False, "responsive": True})
        return f'<div class="chart">{div}</div>'


def _feature(feature_id: object, label: object, value: float, top_probe: object) -> str:
    """A feature as a reader needs it: id, label, its part of the effect, and the token it fires on most
    (the «marked» token of its strongest example, with a few words of context)."""
    text = f"{feature_id} {label} ({value:+.3g})"
    probe = "" if top_probe is None or top_probe != top_probe else str(top_probe)
    if "«" in probe:
        before, rest = probe.split("«", 1)
        token, after = rest.split("»", 1) if "»" in rest else (rest, "")
        words = before.split()[-2:]
        text += f" fires on “{'… ' if len(before.split()) > 2 else ''}{' '.join(words)} «{token}»”"
    return text


def _policy_section(page: _Page, data: ReportData) -> None:
    parts = page.section("policy", "The symbolic policy")
    fit = data.fit
    if not fit:
        parts.append('<p class="empty">no policy fitted yet: run smda materialize</p>')
        return
    parts.append(f'<div class="formula">{html.escape(str(fit.get("formula", "")))}</div>')
    stats = [("λ", fit.get("lambda")), ("R²", fit.get("r2")), ("LOO R²", fit.get("loo_r2")),
             ("held-out accuracy", fit.get("accuracy")), ("majority baseline", fit.get("majority_baseline")),
             ("probes", fit.get("n_probes")), ("features", fit.get("k")), ("preset", fit.get("preset")),
             ("hook", fit.get("hook")), ("position", fit.get("position")), ("behaviour", fit.get("behaviour"))]
    parts.append('<div class="stats">' + "".join(f"<span>{html.escape(k)} <b>{_num(v)}</b></span>" for k, v in stats) + "</div>")
    for warning in str(fit.get("warnings") or "").splitlines():
        parts.append(f'<p class="note">warning: {html.escape(warning)}</p>')
    if not data.policy.empty:
        parts.append(page.figure(figures.policy_coefficients(data.policy)))


def _category_section(page: _Page, data: ReportData) -> None:
    parts = page.section("categories", "Category gaps")
    parts.append('<p class="note">Mean refusal_prob per probe category (bars) and the policy\'s mean prediction '
                 '(diamonds, in probability units); gap = the category\'s mean minus the mean over categories of the '
                 'same kind. The most under-refused harmful category is orange.</p>')
    if data.categories.empty:
        parts.append('<p class="empty">no probe scores stored</p>')
        return
    parts.append(page.figure(figures.category_gaps(data.categories)))
    parts.append(table(data.categories, ["category", "harmful", "n", "mean_refusal_prob", "mean_predicted_prob",
                                         "refusal_gap", "top_features"], text=["top_features"]))


def _pairs_section(page: _Page, data: ReportData) -> None:
    parts = page.section("pairs", "The pairs")
    if data.pairs.empty:
        parts.append('<p class="empty">no pair scores stored</p>')
        return
    parts.append(f'<p class="note">{len(data.pairs):,} pairs. Hover a point for its text. The recommended score '
                 f'(<code>{html.escape(data.score_name)}</code>) is kind-free: higher is a better pair to keep.</p>')
    parts.append(page.figure(figures.pair_scores(data.pairs, data.score_name)))
    if not data.separation.empty:
        parts.append("<h3>Separation of the bad kinds</h3><p class=\"note\">AUC = P(score of a good pair of the same "
                     "prompt kind &gt; score of a bad pair); 0.5 is no signal, below 0.5 inverted.</p>")
        parts.append(table(separation_wide(data.separation, data.score_name)))


def separation_wide(separation: pd.DataFrame, score_name: str) -> pd.DataFrame:
    """One row per score, one AUC column per bad kind; the recommended score first, named after what it is."""
    wide = separation.pivot_table(index="score", columns="bad_kind", values="auc").reset_index()
    wide.columns.name = None
    first = wide["score"] == "score"
    wide.loc[first, "score"] = f"score (recommended: {score_name})"
    return pd.concat([wide[first], wide[~first]], ignore_index=True)


def _mechanism_section(page: _Page, data: ReportData) -> None:
    parts = page.section("mechanism", "Mechanism of the most harmful pairs")
    parts.append(f'<p class="note">The {TOP_HARMFUL} pairs with the lowest recommended score. Bars: the policy '
                 'features their score flows through, split into the activation part (the pair changes what the model '
                 'reads) and the weight part (it changes how refusal depends on the feature). Table: the SAE features '
                 'that carry their harm (a fit of the pair\'s own shift pattern over probes, after removing the generic '
                 'push of its response type; negative = harmful), the token each fires on most, and the probe '
                 'categories where the harm lands.</p>')
    if data.mechanism.empty:
        parts.append('<p class="empty">no mechanism stored</p>')
        return
    harmful = data.pairs.nsmallest(len(set(data.mechanism["pair_id"])), "score")
    parts.append(page.figure(figures.mechanism_bars(data.mechanism, harmful)))
    effect = data.mechanism[data.mechanism["source"] == "landing"]
    rows = []
    for pair in harmful.itertuples(index=False):
        feats = effect[effect["pair_id"] == pair.pair_id].sort_values("rank").head(3)
        land = data.landing[data.landing["pair_id"] == pair.pair_id] if not data.landing.empty else data.landing
        rows.append({"pair_id": pair.pair_id, "kind": getattr(pair, "kind", None), "score": pair.score,
                     "prompt": pair.prompt, "response": pair.response,
                     "features carrying its harm": "; ".join(_feature(r.feature_id, r.label, r.weight_part, r.top_probe)
                                                             for r in feats.itertuples()),
                     "where its harm lands": "; ".join(
                         f"{r.category} ({'harmful' if r.harmful else 'harmless'}, n={r.n_probes}: refusal {r.dp:+.2g})"
                         for r in land.itertuples())})
    parts.append("<h3>Their text, the features that carry their harm, and the probes where it lands</h3>")
    parts.append(table(pd.DataFrame(rows), text=["prompt", "response", "features carrying its harm",
                                                 "where its harm lands"]))
    if not data.heatmap.empty:
        parts.append(page.figure(figures.effect_heatmap(data.heatmap)))


def _interference_section(page: _Page, data: ReportData) -> None:
    parts = page.section("interference", "Interference")
    parts.append('<p class="note">Flagged pairs: their harm lands away from their own request far more than for '
                 'pairs of their response type (calibrated robust z). The features are the top of a fit of each '
                 'pair\'s own shift pattern (negative = harmful).</p>')
    flagged = data.interference
    if flagged.empty:
        parts.append('<p class="empty">no pair flagged</p>')
        return
    spill = data.interference_features
    carriers = {p: "; ".join(_feature(r.feature_id, r.label, r.harm, r.top_probe) for r in g.itertuples())
                for p, g in spill.groupby("pair_id")} if not spill.empty else {}
    rows = flagged.assign(features=[carriers.get(p, "") for p in flagged["pair_id"]])
    parts.append(table(rows, ["pair_id", "interference", "interference_z", "worst_group", "prompt", "response",
                              "metadata_json", "features"],
                       text=["prompt", "response", "metadata_json", "features"], scroll=True))


def _tiers_section(page: _Page, data: ReportData) -> None:
    parts = page.section("validation", "Tiers and validation")
    parts.append("<h3>Method agreement (cheaper tiers against exact)</h3>")
    parts.append(table(data.agreement) if not data.agreement.empty
                 else '<p class="empty">no tier agreement stored (v_method_agreement)</p>')
    parts.append("<h3>Counterfactual agreement (LDS) and stability</h3>")
    parts.append(table(data.validation, ["check", "method", "score", "n", "spearman", "detail"], text=["detail"])
                 if not data.validation.empty else
                 '<p class="empty">none stored: smda validate lds / smda validate stability</p>')
    parts.append("<h3>Curation against oracle and random removal</h3>")
    if data.curation.empty:
        parts.append('<p class="empty">none stored: smda curate</p>')
        return
    parts.append(page.figure(figures.curation_bars(data.curation)))
    parts.append(table(data.curation, ["experiment_id", "rule", "variant", "seeds", "n_pairs", "correctness", "precision",
                                       "recall", "f1", "f1_sd", "refusal_accuracy"]))


SECTIONS: tuple[Callable[[_Page, ReportData], None], ...] = (
    _policy_section, _category_section, _pairs_section, _mechanism_section, _interference_section, _tiers_section)


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("</script", "<\\/script")


def render_report(data: ReportData, *, on_section: Callable[[str], None] | None = None) -> tuple[str, int, tuple[str, ...]]:
    """The whole page as one string, the number of figures and the section keys; `on_section` hears each section."""
    page = _Page()
    for build in SECTIONS:
        build(page, data)
        if on_section:
            on_section(page.sections[-1][0])
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in page.sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'
                   for key, title, parts in page.sections)
    fit = data.fit
    subtitle = " · ".join(html.escape(str(x)) for x in (fit.get("model"), fit.get("sae"), fit.get("fitted_at"), data.warehouse) if x)
    meta = json.dumps({"warehouse": data.warehouse, "n_pairs": int(len(data.pairs)), "score_name": data.score_name})
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>SMDA report</title>'
           f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>'
           f'<script type="application/json" id="smda-report-meta">{html.escape(meta, quote=False)}</script>'
           f'<script>{_plotly_js()}</script></head><body>'
           f'<header><h1>SMDA report: which SFT pairs shape refusal, through which features</h1><p>{subtitle}</p></header>'
           f'<nav>{nav}</nav><main>{body}</main></body></html>')
    return doc, page.n_figures, tuple(key for key, _, _ in page.sections)


def write_report(warehouse: str | Path, out: str | Path, *, progress: bool = False) -> ReportResult:
    """Read the warehouse's views and write the report to `out` atomically (a reader never sees half a page)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=len(SECTIONS) + 2, desc="report", disable=not progress, leave=False)
    data = read_report_data(warehouse)
    bar.update(1)
    doc, n_figures, sections = render_report(data, on_section=lambda _: bar.update(1))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    bar.update(1)
    bar.close()
    return ReportResult(path=path, n_bytes=path.stat().st_size, seconds=time.perf_counter() - t0,
                        n_figures=n_figures, sections=sections, data=data)
