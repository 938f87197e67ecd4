"""Each Dagster asset materialised on its own (`dg.materialize` of that asset alone, its upstream already
stored), its output checked against an independent computation.

One small world: the demo model with 60 of its probes, one SFT file of 4 pairs, a metadata table,
a real DuckDB file and a persistent Dagster instance. The tests run in the pipeline's order.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from conftest import CACHE, demo_config
from smda_core.store.query import query

pytestmark = pytest.mark.slow


class World:
    def __init__(self, root: Path):
        from smda_core.sources import resolve_sources

        src = resolve_sources(demo_config(), progress=False)
        probes = [json.loads(line) for line in Path(src.probes).read_text().splitlines()]
        random.Random(1).shuffle(probes)
        self.probes = probes[:60]
        self.pairs = [json.loads(line) for line in Path(src.sft[0]).read_text().splitlines()][:4]
        self.sae_path = src.sae["path"]
        (root / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in self.probes))
        (root / "sft").mkdir()
        self.sft = root / "sft" / "pairs.jsonl"
        self.sft.write_text("".join(json.dumps(p) + "\n" for p in self.pairs))
        self.labels = root / "labels.csv"
        with self.labels.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "annotator"])
            w.writerows([[p["pair_id"], "x"] for p in self.pairs[:2]] + [["nope", "y"]])
        self.warehouse = root / "wh" / "warehouse.duckdb"
        self.config = root / "smda.yaml"
        self.config.write_text(
            f"data:\n  probes: {root / 'probes.jsonl'}\n  sft: []\n  metadata:\n    - {{path: {self.labels}, key: id}}\n"
            f"watch:\n  folder: {root / 'sft'}\ndemo:\n  cache_dir: {CACHE}\nwarehouse: {self.warehouse}\n"
            "curation:\n  rule: 'lowest:dy_harmful:1'\n  n_random: 2\n  epochs: 1\n")
        home = root / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.instance = dg.DagsterInstance.from_config(str(home))

    @property
    def resource(self):
        from smda_assets.resources import SMDAResource

        return SMDAResource(config_path=str(self.config), warehouse_path=str(self.warehouse))

    def materialize(self, *keys: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
        from smda_assets.definitions import defs

        result = dg.materialize([*defs.assets, *defs.asset_checks], selection=list(keys), partition_key=partition,
                                resources={"smda": self.resource}, instance=self.instance)
        assert result.success
        return result


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    return World(tmp_path_factory.mktemp("each"))


@pytest.fixture(scope="module")
def batch(w):
    from smda_assets.partitions import sft_batches
    from smda_core.inputs.batches import file_batch_id

    b = file_batch_id(w.sft)
    w.instance.add_dynamic_partitions(sft_batches.name, [b])
    return b


def test_probe_readout_alone_reads_what_a_plain_forward_pass_gives(w):
    from smda_core.model.chat import encode_prompt
    from smda_core.model.loading import load_model, load_sae

    w.materialize("probes", "features", "behaviour_scores")
    probes = query(w.warehouse, "SELECT * FROM smda.probes ORDER BY probe_index").to_pylist()
    assert [p["prompt"] for p in probes] == [p["prompt"] for p in w.probes]
    info = query(w.warehouse, "SELECT * FROM smda.readout_info").to_pylist()[0]
    assert info["hook"] == "blocks.2.hook_resid_post" and info["n_probes"] == 60
    b = query(w.warehouse, "SELECT behaviour, refusal_prob FROM smda.behaviour_scores").to_pandas()
    np.testing.assert_allclose(b.refusal_prob, np.exp(b.behaviour), rtol=1e-12)  # log_refusal: y = log p
    # features of 3 probes against HF's own hidden states (output of block 2 = hidden_states[3]) through the SAE
    model, tok = load_model(str(Path(w.sae_path).parent / "model"))
    sae = load_sae(path=w.sae_path)
    for p in probes[:3]:
        enc = encode_prompt(tok, p["prompt"])
        with torch.no_grad():
            h = model(input_ids=torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states[3][0, enc.end_of_turn]
            acts = sae.encode(h[None])[0].double().numpy()
        stored = query(w.warehouse, "SELECT feature_id, activation FROM smda.features WHERE probe_id = ?", [p["probe_id"]])
        mine = {int(i): float(acts[i]) for i in np.flatnonzero(acts)}
        got = dict(zip(stored["feature_id"].to_pylist(), stored["activation"].to_pylist()))
        assert set(got) == set(mine)
        np.testing.assert_allclose([got[i] for i in sorted(mine)], [mine[i] for i in sorted(mine)], rtol=1e-4, atol=1e-5)


def test_policy_alone_equals_sklearn_on_the_stored_features(w):
    from sklearn.linear_model import Ridge

    w.materialize("policy", "policy_fit", "feature_labels")
    fit = query(w.warehouse, 'SELECT "lambda", intercept FROM smda.v_policy_fit').to_pylist()[0]
    pol = query(w.warehouse, "SELECT feature_id, coef, mean, std FROM smda.v_policy ORDER BY feature_id").to_pandas()
    feats = query(w.warehouse, "SELECT p.probe_index, f.feature_id, f.activation FROM smda.features f "
                               "JOIN smda.probes p USING (probe_id)").to_pandas()
    y = query(w.warehouse, "SELECT b.behaviour FROM smda.behaviour_scores b JOIN smda.probes p USING (probe_id) "
                           "ORDER BY p.probe_index")["behaviour"].to_numpy()
    X = feats.pivot_table(index="probe_index", columns="feature_id", values="activation", fill_value=0.0)
    X = X.reindex(index=range(60), columns=pol.feature_id, fill_value=0.0).to_numpy()
    Z = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    ref = Ridge(alpha=fit["lambda"], fit_intercept=True).fit(Z, y)
    np.testing.assert_allclose(pol.coef, ref.coef_, rtol=1e-7, atol=1e-10)
    assert fit["intercept"] == pytest.approx(ref.intercept_, rel=1e-9)


def test_sft_pairs_alone_stages_the_files_rows(w, batch):
    w.materialize("sft_pairs", partition=batch)
    staged = w.resource.stage.read_table(batch, "sft_pairs")
    assert staged["prompt"].to_pylist() == [p["prompt"] for p in w.pairs]
    assert staged["kind"].to_pylist() == [p["kind"] for p in w.pairs]
    assert w.resource.stage.load_json(batch, "source")["source_file"] == str(w.sft)


def test_pair_shifts_alone_measures_every_pair_against_the_stored_policy(w, batch):
    w.materialize("pair_shifts", partition=batch)
    shifts = w.resource.stage.load_shifts(batch)
    stored = query(w.warehouse, "SELECT feature_id FROM smda.v_policy ORDER BY rank")["feature_id"].to_pylist()
    assert sorted(shifts.feature_ids.tolist()) == sorted(stored)
    assert shifts.pair_ids == w.resource.stage.read_table(batch, "sft_pairs")["pair_id"].to_pylist()
    assert shifts.dY.shape == (4, 60) and np.isfinite(shifts.dY).all() and np.abs(shifts.dY).max() > 0


def test_pair_attribution_alone_equals_a_brute_force_ridge_refit(w, batch):
    from sklearn.linear_model import Ridge

    w.materialize("pair_attribution", "pair_summary", partition=batch)
    shifts = w.resource.stage.load_shifts(batch)
    policy = w.resource.policy()
    attr = w.resource.stage.read_table(batch, "pair_attribution").to_pandas()
    lam = policy.lam
    dZ = shifts.dX_exact / policy.standardiser.std  # default preset: exact ΔX, standardised design
    base = Ridge(alpha=lam).fit(policy.Z, policy.y).coef_
    for i, pid in enumerate(shifts.pair_ids):
        moved = Ridge(alpha=lam).fit(policy.Z + dZ[i], policy.y + shifts.dY[i]).coef_
        got = attr[(attr.pair_id == pid) & (attr.method == "refit")].set_index("feature_id").delta_beta
        np.testing.assert_allclose(got.loc[policy.feature_ids].to_numpy(), moved - base, rtol=1e-4, atol=1e-11)


def test_loaded_batches_alone_moves_the_staged_rows_into_duckdb(w, batch):
    w.materialize("loaded_batches")
    for table in ("sft_pairs", "pair_attribution", "pair_summary"):
        staged = w.resource.stage.read_table(batch, table).num_rows
        assert query(w.warehouse, f"SELECT count(*) AS n FROM smda.{table} WHERE batch_id = ?", [batch])["n"][0].as_py() == staged


def test_views_alone_creates_every_view_of_sql(w):
    from smda_core.store.warehouse import SQL_DIR

    w.materialize("views")
    declared = {line.split("smda.")[1].split()[0] for f in Path(SQL_DIR).glob("*.sql")
                for line in f.read_text().splitlines() if line.startswith("CREATE OR REPLACE VIEW")}
    have = set(query(w.warehouse, "SELECT view_name FROM duckdb_views() WHERE schema_name = 'smda'")["view_name"].to_pylist())
    assert declared <= have and query(w.warehouse, "SELECT count(*) AS n FROM smda.v_pair_summary")["n"][0].as_py() == 4


def test_dataset_metadata_alone_joins_the_users_table(w, batch):
    w.materialize("dataset_metadata")
    ids = query(w.warehouse, "SELECT pair_id FROM smda.v_pair_summary")["pair_id"].to_pylist()
    with w.labels.open() as fh:
        keys = [r["id"] for r in csv.DictReader(fh)]
    loaded = query(w.warehouse, "SELECT * FROM smda.v_dataset_metadata").to_pylist()[0]
    assert loaded["n_rows"] == 3 and loaded["matched"] == len(set(keys) & set(ids))


def test_plots_alone_draws_one_png_per_figure(w):
    from smda_core.report.plots import QUERIES

    w.materialize("plots")
    pngs = {p.stem: p for p in w.resource.plots.glob("*.png")}
    assert set(pngs) == set(QUERIES) and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs.values())


def test_curation_experiment_alone_drops_what_the_rule_says(w):
    w.materialize("curation_experiment")
    rows = query(w.warehouse, "SELECT variant, n_pairs, dropped FROM smda.v_curation").to_pylist()
    summary = query(w.warehouse, "SELECT pair_id, dy_harmful FROM smda.v_pair_summary").to_pandas()
    lowest = summary.sort_values("dy_harmful", kind="stable").pair_id.iloc[0]
    curated = next(r for r in rows if r["variant"] == "curated")
    assert json.loads(curated["dropped"]) == [lowest] and curated["n_pairs"] == 3
    assert {r["variant"] for r in rows} >= {"base", "full", "curated", "random_seed_0", "random_seed_1"}
