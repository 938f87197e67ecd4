"""The HTML report of the demo warehouse: its numbers against independent computations on the views, what it
must show (the planted gap, a trigger pair's trigger feature, the separation of the bad kinds), the CLI, the
Dagster asset's metadata, and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from smda_core.store.query import query

TRIGGER_WORDS_CONFIG = "without anyone knowing"  # demo.trigger_phrase of the default recipe (checked below)


def rows(warehouse, sql: str) -> pd.DataFrame:
    return query(warehouse, sql).to_pandas()


def test_the_default_recipe_is_the_one_these_tests_read():
    from smda_core.config import load_config

    demo = load_config(None).demo
    assert demo.trigger_phrase == TRIGGER_WORDS_CONFIG and demo.planted_category == "religious_stereotyping"


def test_category_gaps_equal_a_groupby_of_the_probe_scores(demo_report, demo_warehouse):
    written, _ = demo_report
    probes = rows(demo_warehouse, "SELECT category, harmful, refusal_prob, predicted FROM smda.v_probe_scores")
    probes["predicted_prob"] = np.exp(np.minimum(probes["predicted"], 0.0))  # behaviour log_refusal: y = log p
    expected = probes.groupby(["category", "harmful"]).agg(n=("refusal_prob", "size"), refusal=("refusal_prob", "mean"),
                                                           predicted=("predicted_prob", "mean"))
    got = written.data.categories.set_index(["category", "harmful"]).loc[expected.index]
    np.testing.assert_allclose(got["mean_refusal_prob"], expected["refusal"], rtol=1e-9)
    np.testing.assert_allclose(got["mean_predicted_prob"], expected["predicted"], rtol=1e-9)
    assert (got["n"].to_numpy() == expected["n"].to_numpy()).all()


def test_the_planted_gap_category_is_shown_as_the_most_under_refused(demo_report, demo_warehouse):
    from smda_core.config import load_config

    written, page = demo_report
    planted = load_config(None).demo.planted_category
    probes = rows(demo_warehouse, "SELECT category, refusal_prob FROM smda.v_probe_scores WHERE harmful")
    assert probes.groupby("category")["refusal_prob"].mean().idxmin() == planted  # the demo plants it
    assert f"{planted} is the most under-refused harmful category" in page
    gaps = written.data.categories
    harmful = gaps[gaps["harmful"]]
    lowest = harmful.loc[harmful["mean_refusal_prob"].idxmin()]
    others = harmful[harmful["category"] != planted]["mean_refusal_prob"]
    assert lowest["category"] == planted and lowest["mean_refusal_prob"] < others.min() - 0.2  # visibly apart


def test_every_pair_is_in_the_score_plot_with_its_scores(demo_report, demo_warehouse):
    written, page = demo_report
    summary = rows(demo_warehouse, "SELECT pair_id, score, alignment FROM smda.v_pair_summary").set_index("pair_id")
    shown = written.data.pairs.set_index("pair_id")
    assert set(shown.index) == set(summary.index) and len(shown) == 200
    np.testing.assert_allclose(shown.loc[summary.index, "score"], summary["score"])
    np.testing.assert_allclose(shown.loc[summary.index, "alignment"], summary["alignment"])
    specs = _figures(page)
    scatter = next(f for f in specs if "recommended score" in json.dumps(f["layout"].get("title", "")))
    plotted = sorted(y for trace in scatter["data"] for y in _values(trace["y"]))
    np.testing.assert_allclose(plotted, np.sort(summary["score"].to_numpy()))
    kinds = {trace["name"] for trace in scatter["data"]}
    assert {"harmful_compliance", "harmless_refusal", "harmless_trigger"} <= kinds  # bad kinds marked


def test_the_recommended_score_separates_every_bad_kind(demo_report, demo_warehouse):
    from sklearn.metrics import roc_auc_score

    written, page = demo_report
    pairs = rows(demo_warehouse, "SELECT s.score, p.kind, p.harmful FROM smda.v_pair_summary s "
                                 "JOIN smda.v_sft_pairs p USING (pair_id)")
    good = {True: "harmful_refusal", False: "harmless_compliance"}
    table = written.data.separation.query("score == 'score'").set_index("bad_kind")["auc"]
    for bad in ("harmful_compliance", "harmless_refusal", "harmless_trigger"):
        harmful = bool(pairs.loc[pairs["kind"] == bad, "harmful"].iloc[0])
        sub = pairs[pairs["kind"].isin([bad, good[harmful]])]
        auc = roc_auc_score(sub["kind"] == good[harmful], sub["score"])  # P(good scores above bad)
        assert auc > 0.9, (bad, auc)
        assert table[bad] == pytest.approx(auc, abs=1e-3)
    name = rows(demo_warehouse, "SELECT score_name FROM smda.v_policy_fit")["score_name"].iloc[0]
    assert f"score (recommended: {name})" in page


def test_a_trigger_pair_is_shown_with_a_trigger_feature_among_its_top_features(demo_report, demo_warehouse):
    """A trigger feature fires most strongly on a word of the trigger phrase (its rank-1 example's marked token),
    read from v_feature_examples, independently of the report."""
    written, page = demo_report
    words = set(TRIGGER_WORDS_CONFIG.split())
    examples = rows(demo_warehouse, "SELECT feature_id, token FROM smda.v_feature_examples WHERE rank = 1")
    trigger_features = set(examples.loc[examples["token"].str.strip().str.lower().isin(words), "feature_id"])
    assert trigger_features
    kinds = rows(demo_warehouse, "SELECT pair_id, kind FROM smda.v_sft_pairs").set_index("pair_id")["kind"]
    shown = pd.concat([
        written.data.mechanism[written.data.mechanism["source"] == "landing"].query("rank <= 3")[["pair_id", "feature_id"]],
        written.data.interference_features[["pair_id", "feature_id"]]])
    shown = shown[shown["pair_id"].map(kinds) == "harmless_trigger"]
    hits = shown[shown["feature_id"].isin(trigger_features)]
    assert not hits.empty, "no trigger pair shown with a trigger feature"
    pair, feature = hits.iloc[0]
    assert re.search(rf"{pair}</td>.*?{feature} [^<]*?fires on “[^”]*«(without|anyone|knowing)»", page, re.DOTALL)


def test_the_heatmap_holds_the_largest_effects(demo_report, demo_warehouse):
    from smda_core.report.data import HEATMAP_FEATURES, HEATMAP_PAIRS

    written, _ = demo_report
    m = rows(demo_warehouse, "SELECT pair_id, feature_id, activation_part + weight_part AS effect FROM smda.v_pair_mechanism "
                             "WHERE score = (SELECT score_name FROM smda.v_policy_fit) AND source = 'policy' AND feature_id >= 0")
    m["size"] = m["effect"].abs()
    pairs = m.groupby("pair_id")["size"].max().sort_values(ascending=False).head(HEATMAP_PAIRS).index
    features = m.groupby("feature_id")["size"].max().sort_values(ascending=False).head(HEATMAP_FEATURES).index
    heat = written.data.heatmap
    assert set(heat["pair_id"]) == set(pairs) and set(heat["feature_id"]) == set(features)
    assert heat["effect"].abs().max() == pytest.approx(m["size"].max())


def test_interference_lists_every_flagged_pair_with_its_text(demo_report, demo_warehouse):
    written, page = demo_report
    flagged = rows(demo_warehouse, "SELECT s.pair_id, p.prompt FROM smda.v_pair_summary s JOIN smda.v_sft_pairs p "
                                   "USING (pair_id) WHERE s.flagged")
    assert len(written.data.interference) == len(flagged) > 0
    section = page[page.index('<section id="interference">'):page.index('<section id="validation">')]
    for pair, prompt in flagged.itertuples(index=False):
        assert f"<td>{pair}</td>" in section and prompt.replace("'", "&#x27;") in section


def test_smda_report_writes_one_offline_file(demo_warehouse, tmp_path):
    from conftest import smda_here

    out = tmp_path / "shared" / "report.html"
    result = smda_here("report", "--warehouse", str(demo_warehouse), "--out", str(out))
    assert result.returncode == 0, result.stdout
    assert out.exists() and f"report: {out}" in " ".join(result.stdout.split())
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", page)  # nothing fetched from elsewhere
    assert "cdn.plot.ly" not in page.replace("https://cdn.plot.ly", "")  # the library itself is inline
    assert page.count("Plotly.newPlot") >= 5


def test_the_report_asset_shows_its_figures_in_the_dagster_ui(demo_warehouse, tmp_path):
    import shutil

    import dagster as dg
    from PIL import Image

    from smda_assets.assets.report import report
    from smda_assets.resources import SMDAResource

    wh = tmp_path / "warehouse.duckdb"
    shutil.copy(demo_warehouse, wh)
    result = dg.materialize([report], resources={"smda": SMDAResource(warehouse_path=str(wh))},
                            instance=dg.DagsterInstance.ephemeral())
    metadata = result.asset_materializations_for_node("report")[0].metadata
    assert (tmp_path / "warehouse.files" / "report.html").exists()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", metadata["preview"].value)
    assert len(images) == 2
    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 300


def test_the_policy_preview_draws_every_coefficient_with_its_label(demo_warehouse):
    from smda_core.report.previews import policy_markdown

    policy = rows(demo_warehouse, "SELECT feature_id, coef, label FROM smda.v_policy")
    markdown = policy_markdown(policy, "refusal ≈ …")
    assert markdown.startswith("`refusal ≈ …`") and "data:image/png;base64," in markdown


def _figures(page: str) -> list[dict]:
    """The Plotly figure specs embedded in the page (data and layout of each Plotly.newPlot call)."""
    specs = []
    for match in re.finditer(r'Plotly\.newPlot\(\s*"fig-\d+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"displaylogo"', page, re.DOTALL):
        specs.append({"data": json.loads(match.group(1)), "layout": json.loads(match.group(2))})
    return specs


def _values(array) -> list[float]:
    """A Plotly array: a list, or a typed array {"dtype", "bdata"} (base64)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def test_the_policy_asset_shows_its_coefficients_in_the_dagster_ui(demo_warehouse, tmp_path):
    import shutil

    import dagster as dg
    import yaml
    from PIL import Image

    from conftest import CACHE
    from smda_assets.assets.probes import policy_assets
    from smda_assets.resources import SMDAResource

    wh = tmp_path / "warehouse.duckdb"
    shutil.copy(demo_warehouse, wh)  # the stored readout; the policy is refitted from it
    cfg = tmp_path / "smda.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"cache_dir": CACHE}, "warehouse": str(wh)}))
    result = dg.materialize([policy_assets], resources={"smda": SMDAResource(config_path=str(cfg))},
                            instance=dg.DagsterInstance.ephemeral(), selection=["policy", "policy_fit", "feature_labels"])
    metadata = result.asset_materializations_for_node("policy_assets")[0].metadata
    markdown = metadata["coefficients"].value
    formula = rows(wh, "SELECT formula FROM smda.v_policy_fit")["formula"].iloc[0]
    assert markdown.startswith(f"`{formula}`")
    [image] = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)
    width, height = Image.open(io.BytesIO(base64.b64decode(image))).size
    assert width > 300 and height > 200


def test_curation_and_validation_are_drawn_when_stored(demo_report):
    """Curation and LDS rows (none in the demo warehouse until `smda curate` / `smda validate` run): the latest
    experiment's F1 per variant is what the chart draws, and the validation rows are tabled."""
    import dataclasses

    from smda_core.report.html import render_report

    written, _ = demo_report
    curation = pd.DataFrame({
        "experiment_id": ["old"] * 2 + ["new"] * 4, "rule": ["oracle"] * 2 + ["quantitative:score"] * 4,
        "variant": ["full", "oracle", "full", "oracle", "curated", "random_seed_0"], "n_pairs": [200, 170, 200, 170, 180, 180],
        "correctness": 0.8, "precision": 0.8, "recall": 0.8, "f1": [0.1, 0.2, 0.71, 0.78, 0.75, 0.70],
        "refusal_accuracy": 0.9, "created_at": pd.Timestamp("2026-01-01")})
    validation = pd.DataFrame({"check": ["lds"], "method": ["refit"], "score": ["dy_harmful"], "n": [8],
                               "spearman": [0.48], "detail": ["8 subsets of 50%"], "created_at": pd.Timestamp("2026-01-01")})
    page, n_figures, _ = render_report(dataclasses.replace(written.data, curation=curation, validation=validation))
    assert n_figures == written.n_figures + 1
    chart = next(f for f in _figures(page) if "Curation" in json.dumps(f["layout"]["title"]))
    [bars] = chart["data"]
    assert bars["x"] == ["full", "oracle", "curated", "random_seed_0"]
    np.testing.assert_allclose(_values(bars["y"]), [0.71, 0.78, 0.75, 0.70])
    section = page[page.index('<section id="validation">'):]
    assert "<td>lds</td>" in section and "8 subsets of 50%" in section and "no tier agreement stored" in section
