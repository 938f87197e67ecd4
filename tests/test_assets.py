"""The warehouse end to end: Dagster materialisation into a temp DuckDB, views checked against smda_core."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import CACHE, ROOT
from smda_core import inputs
from smda_core.store.query import query, row_counts

CONTRACT = {
    "v_policy": {"feature_id", "rank", "coef", "label", "mean", "std", "direction"},
    "v_policy_fit": {"lambda", "r2", "loo_r2", "accuracy", "majority_baseline", "intercept", "n_probes", "k", "preset",
                     "model", "sae", "hook", "fitted_at"},
    "v_probe_scores": {"probe_id", "category", "harmful", "refused", "behaviour", "refusal_prob", "predicted"},
    "v_category_gaps": {"category", "harmful", "n", "mean_refusal_prob", "mean_behaviour", "mean_predicted", "top_features"},
    "v_pair_attribution": {"pair_id", "feature_id", "label", "delta_beta", "via_x", "via_y", "via_xy", "contribution", "method"},
    "v_pair_summary": {"pair_id", "batch_id", "alignment", "correctness_shift", "dy_harmful", "dy_harmless", "active_flips",
                       "dominant_feature", "dominant_share", "intended_features", "interference", "flagged"},
    "v_feature_top_pairs": {"feature_id", "pair_id", "delta_beta", "rank"},
    "v_interference": {"pair_id", "dominant_feature", "intended_features", "interference"},
    "v_pair_shifts": {"pair_id", "probe_id", "feature_id", "dz", "dy"},
    "v_sft_pairs": {"pair_id", "batch_id", "prompt", "response", "content_hash", "kind", "category", "source"},
    "v_features": {"probe_id", "feature_id", "activation", "position"},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory, runtime):
    """A config with a small SFT file (6 pairs of the demo set), materialised by Dagster into a temp warehouse."""
    from smda_assets.run import materialize_all
    from smda_core.sources import resolve_sources

    tmp = tmp_path_factory.mktemp("wh")
    demo_pairs = [json.loads(l) for l in open(resolve_sources(runtime.config, progress=False).sft[0])]
    small = tmp / "sft" / "batch_a.jsonl"
    inputs.write_jsonl(small, demo_pairs[:24])
    cfg = tmp / "smda.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"cache_dir": CACHE}, "data": {"sft": [str(small)]},
                                   "warehouse": str(tmp / "warehouse.duckdb")}))
    batches = materialize_all(str(cfg))
    return cfg, tmp / "warehouse.duckdb", small, batches


def test_every_contract_view_has_rows_and_columns(built):
    _, wh, _, _ = built
    counts = row_counts(wh)
    for view, cols in CONTRACT.items():
        assert counts[view] > 0, view
        have = set(query(wh, f"SELECT * FROM smda.{view} LIMIT 0").column_names)
        assert cols <= have, (view, cols - have)


def test_rematerialising_replaces_rows(built):
    from smda_assets.run import materialize_all

    cfg, wh, _, _ = built
    before = row_counts(wh)
    materialize_all(str(cfg))
    assert row_counts(wh) == before


def test_views_equal_a_direct_smda_core_computation(built, runtime, probe_scores, policy):
    from smda_core.api import attribute, measure_shifts

    _, wh, small, batches = built
    got = {r["feature_id"]: r["coef"] for r in query(wh, "SELECT feature_id, coef FROM smda.v_policy").to_pylist()}
    assert got.keys() == set(policy.feature_ids.tolist())
    np.testing.assert_allclose([got[f] for f in policy.feature_ids], policy.coef, rtol=1e-9)

    pairs = inputs.read_sft_pairs(small, batch_id=batches[0]).slice(0, 1)
    attr = attribute(policy, probe_scores, measure_shifts(runtime, policy, pairs, progress=False), pairs, runtime.config)
    for method, split in attr.splits.items():
        rows = query(wh, "SELECT feature_id, delta_beta, via_x, via_y FROM smda.v_pair_attribution WHERE pair_id = ? AND method = ?",
                     [pairs["pair_id"][0].as_py(), method]).to_pylist()
        by_id = {r["feature_id"]: r for r in rows}
        np.testing.assert_allclose([by_id[f]["delta_beta"] for f in policy.feature_ids], split.total[0], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose([by_id[f]["via_y"] for f in policy.feature_ids], split.via_y[0], rtol=1e-6, atol=1e-12)

    gaps = {r["category"]: r["mean_refusal_prob"] for r in query(wh, "SELECT * FROM smda.v_category_gaps").to_pylist()}
    for cat in ("weapons", "cooking"):
        assert gaps[cat] == pytest.approx(probe_scores.refusal_prob[probe_scores.category == cat].mean(), rel=1e-9)


def test_query_command_refuses_to_write(built):
    from smda_assets.cli import app

    cfg, wh, _, _ = built
    before = row_counts(wh)
    runner = CliRunner()
    for sql in ("INSERT INTO smda.features VALUES ('x', 1, 1.0)", "DROP TABLE smda.features"):
        res = runner.invoke(app, ["query", sql, "--config", str(cfg)])
        assert res.exit_code == 1 and "read-only" in res.output
    assert row_counts(wh) == before
    ok = runner.invoke(app, ["query", "SELECT count(*) AS n FROM smda.v_policy", "--config", str(cfg), "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.output)[0]["n"] > 0


def test_query_prints_bracketed_labels_verbatim(built):
    """Policy labels are [bracketed]; a Rich table would take them for markup and drop them."""
    from smda_assets.cli import app

    cfg, wh, _, _ = built
    label = query(wh, "SELECT label FROM smda.v_policy ORDER BY rank LIMIT 1").column("label")[0].as_py()
    res = CliRunner().invoke(app, ["query", "SELECT '[' || label || ']' AS l FROM smda.v_policy ORDER BY rank LIMIT 1",
                                   "--config", str(cfg)], env={"COLUMNS": "400"})
    assert res.exit_code == 0 and f"[{label}]" in res.output


def test_lds_of_every_method_and_the_peer_is_stored_on_the_same_subsets(built):
    from smda_assets.experiments import lds
    from smda_assets.resources import SMDAResource

    cfg, wh, _, _ = built
    table = lds(SMDAResource(config_path=str(cfg)), subsets=4, fraction=0.5, progress=False)
    methods = set(table["method"].to_pylist())
    assert {"refit", "linear", "dattri_tracin", "dattri_trak"} <= methods
    scores = set(zip(table["method"].to_pylist(), table["score"].to_pylist()))
    assert {(m, s) for m in ("refit", "dattri_tracin", "dattri_trak") for s in ("dy_harmful", "margin")} <= scores
    stored = query(wh, "SELECT * FROM smda.v_validation WHERE \"check\" = 'lds'")
    assert stored.num_rows >= 4 and len(set(stored["run_id"].to_pylist())) == 1
    assert all(-1 <= v <= 1 for v in stored["spearman"].to_pylist() if v == v)


def test_definitions_load_like_dg_does():
    import dagster as dg

    from smda_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"probes", "features", "behaviour_scores", "policy", "policy_fit", "feature_labels", "sft_pairs",
            "pair_shifts", "pair_attribution", "pair_summary", "views"} <= keys


def test_definitions_import_no_heavy_libraries():
    code = ("import sys, smda_assets.definitions; "
            "print([m for m in ('torch', 'transformers', 'sae_lens') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_plots_are_drawn_from_the_views_they_name(built, tmp_path):
    from matplotlib.image import imread

    from smda_assets.cli import app
    from smda_core.report.plots import QUERIES, pathways, policy_coefficients

    cfg, wh, _, _ = built
    drawn = sorted((wh.parent / "warehouse.files" / "plots").glob("*.png"))  # the `plots` asset ran with the rest
    assert {p.stem for p in drawn} == set(QUERIES)
    for png in drawn:
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.01, png  # a picture, not a blank

    policy = query(wh, "SELECT feature_id, coef, label FROM smda.v_policy").to_pandas()
    bars = policy_coefficients(policy, top=5).axes[0].patches
    largest = sorted(policy["coef"], key=abs, reverse=True)[:5]
    np.testing.assert_allclose(sorted(b.get_width() for b in bars), sorted(largest))

    attribution = query(wh, QUERIES["pathways"][0]).to_pandas()
    via_x, via_y, via_xy = pathways(attribution, top=4).axes[0].containers
    top = sorted(attribution.to_dict("records"), key=lambda r: abs(r["delta_beta"]), reverse=True)[:4]
    for container, part in ((via_x, "via_x"), (via_y, "via_y"), (via_xy, "via_xy")):
        np.testing.assert_allclose(sorted(b.get_width() for b in container), sorted(r[part] for r in top))

    res = CliRunner().invoke(app, ["plot", "--config", str(cfg), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert {p.stem for p in tmp_path.glob("*.png")} == set(QUERIES)


def test_two_warehouses_in_one_folder_keep_their_own_staged_batches(tmp_path):
    """The demo's warehouse and a real model's sit side by side in warehouse/: one must not read the other's batches."""
    from smda_assets.resources import SMDAResource

    demo, real = (SMDAResource(warehouse_path=str(tmp_path / name)) for name in ("warehouse.duckdb", "smollm2.duckdb"))
    demo.stage.save_json("batch-0000", "source", {"model": "demo"})
    real.stage.save_json("batch-0000", "source", {"model": "smollm2"})
    assert demo.stage.load_json("batch-0000", "source") == {"model": "demo"}
    assert real.stage.load_json("batch-0000", "source") == {"model": "smollm2"}
    assert demo.stage.folder("batch-0000") != real.stage.folder("batch-0000")


def test_a_pickle_planted_in_the_warehouse_folder_is_never_loaded(built, tmp_path):
    """Whoever can write the warehouse folder must not run code in the next step (no pickles anywhere)."""
    import pickle

    from smda_assets.run import materialize_all
    from smda_core.errors import SMDAError
    from smda_core.store.staging import Stage

    cfg, wh, _, batches = built
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):  # unpickling this would create `marker`
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Payload())
    files = wh.with_name(wh.stem + ".files")
    planted = [files / "artifacts" / "policy.pkl", files / "artifacts" / "probe_scores.pkl"]
    planted += [files / "staging" / b / name for b in batches for name in ("shifts.pkl", "source.pkl")]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    materialize_all(str(cfg))  # the whole pipeline again: readout, policy, every batch, the loader
    assert not marker.exists()
    # an array file that carries a pickled object is refused, not loaded
    stage = Stage(tmp_path / "staging")
    stage.folder("b").mkdir(parents=True)
    np.savez(stage.folder("b") / "shifts.npz", __schema__=np.asarray('{"schema": "pair_shifts", "version": 1, "meta": {}}'),
             pair_ids=np.array([Payload()], dtype=object))
    with pytest.raises(SMDAError, match="not an array file"):
        stage.load_shifts("b")
    assert not marker.exists()
