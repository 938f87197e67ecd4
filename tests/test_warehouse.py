"""The warehouse contract: idempotent, atomic writes; the public views and their numbers; read-only queries."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from smda_core.store import warehouse as wh
from smda_core.store.query import ibis_connection, query, row_counts
from smda_core.errors import SMDAError

CONTRACT = {  # DESIGN §6 key columns, and the brief's extras
    "v_policy": ["feature_id", "rank", "coef", "label", "mean", "std", "direction", "statistic"],
    "v_policy_fit": ["lambda", "r2", "loo_r2", "accuracy", "majority_baseline", "intercept", "n_probes", "k",
                     "preset", "model", "sae", "hook", "fitted_at"],
    "v_probe_scores": ["probe_id", "category", "harmful", "refused", "behaviour", "refusal_prob", "predicted",
                       "prompt", "heldout"],
    "v_category_gaps": ["category", "harmful", "n", "mean_refusal_prob", "mean_behaviour", "mean_predicted",
                        "top_features", "refusal_gap"],
    "v_pair_attribution": ["pair_id", "feature_id", "label", "delta_beta", "via_x", "via_y", "via_xy",
                           "contribution", "method", "batch_id"],
    "v_pair_summary": ["pair_id", "batch_id", "alignment", "correctness_shift", "dy_harmful", "dy_harmless",
                       "active_flips", "dominant_feature", "dominant_share", "intended_features", "interference",
                       "flagged", "alignment_refit", "alignment_linear", "dominant_label", "content_hash"],
    "v_feature_top_pairs": ["feature_id", "pair_id", "delta_beta", "rank", "label"],
    "v_interference": ["pair_id", "dominant_feature", "intended_features", "interference", "prompt", "response",
                       "metadata_json", "batch_id", "dominant_label"],
    "v_pair_shifts": ["pair_id", "probe_id", "feature_id", "dz", "dy"],
    "v_sft_pairs": ["pair_id", "batch_id", "prompt", "response", "content_hash"],
    "v_features": ["probe_id", "feature_id", "activation", "position"],
}


@pytest.fixture
def db(tmp_path):
    return tmp_path / "warehouse" / "warehouse.duckdb"


def make_sft(batch: str, n: int = 3, **extra) -> pa.Table:
    ids = [f"{batch}-{i}" for i in range(n)]
    cols = {"pair_id": ids, "batch_id": [batch] * n, "prompt": [f"p {i}" for i in ids],
            "response": [f"r {i}" for i in ids], "content_hash": [f"h{i}" for i in ids],
            "source_file": ["sft.jsonl"] * n, "line": pa.array(range(1, n + 1), pa.int64()),
            "metadata_json": ["{}"] * n}
    cols.update(extra)
    return pa.table(cols)


def rows(con, name: str, order: str = "pair_id") -> list[tuple]:
    return con.execute(f"SELECT * FROM smda.{name} ORDER BY {order}").fetchall()


def test_connect_creates_folder_schema_and_tables(db):
    con = wh.connect(db)
    tables = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'smda'").fetchall()}
    assert set(wh.TABLES) <= tables
    assert [c[1] for c in con.execute("DESCRIBE smda.pair_group_shift").fetchall()] == \
        ["VARCHAR", "VARCHAR", "VARCHAR", "BIGINT", "DOUBLE", "DOUBLE", "VARCHAR"]  # … policy_version
    con.close()
    assert db.parent.is_dir()


def test_connect_refuses_missing_file_and_smda_name(tmp_path):
    with pytest.raises(SMDAError, match="no warehouse"):
        wh.connect(tmp_path / "absent.duckdb", read_only=True)
    with pytest.raises(SMDAError, match="ambiguous"):
        wh.connect(tmp_path / "smda.duckdb")


def test_replace_table_is_idempotent(db):
    con = wh.connect(db)
    t = make_sft("a")
    wh.replace_table(con, "sft_pairs", t)
    first = rows(con, "sft_pairs")
    wh.replace_table(con, "sft_pairs", t)
    assert rows(con, "sft_pairs") == first and len(first) == 3


def test_replace_table_replaces_all_rows(db):
    con = wh.connect(db)
    wh.replace_table(con, "sft_pairs", make_sft("a", 5))
    wh.replace_table(con, "sft_pairs", make_sft("b", 2))
    assert [r[0] for r in rows(con, "sft_pairs")] == ["b-0", "b-1"]


def test_replace_partition_is_idempotent_and_leaves_other_partitions_untouched(db):
    con = wh.connect(db)
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A", 3))
    wh.replace_partition(con, "sft_pairs", "batch_id", "B", make_sft("B", 4))
    before_b = con.sql("SELECT * FROM smda.sft_pairs WHERE batch_id = 'B' ORDER BY pair_id").to_arrow_table()
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A", 2))
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A", 2))
    after_b = con.sql("SELECT * FROM smda.sft_pairs WHERE batch_id = 'B' ORDER BY pair_id").to_arrow_table()
    assert after_b.equals(before_b)
    counts = dict(con.execute("SELECT batch_id, count(*) FROM smda.sft_pairs GROUP BY 1").fetchall())
    assert counts == {"A": 2, "B": 4}


def test_replace_partition_fills_missing_key_and_refuses_foreign_rows(db):
    con = wh.connect(db)
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A").drop_columns(["batch_id"]))
    assert con.execute("SELECT DISTINCT batch_id FROM smda.sft_pairs").fetchall() == [("A",)]
    with pytest.raises(SMDAError, match="another partition"):
        wh.replace_partition(con, "sft_pairs", "batch_id", "B", make_sft("A"))
    assert len(rows(con, "sft_pairs")) == 3


def test_key_value_is_a_bound_parameter(db):
    con = wh.connect(db)
    wh.replace_partition(con, "sft_pairs", "batch_id", "B", make_sft("B"))
    evil = "x' OR 1=1 --"
    wh.replace_partition(con, "sft_pairs", "batch_id", evil, make_sft("B").drop_columns(["batch_id"]))
    counts = dict(con.execute("SELECT batch_id, count(*) FROM smda.sft_pairs GROUP BY 1").fetchall())
    assert counts == {"B": 3, evil: 3}


def test_failed_insert_rolls_back_and_keeps_old_rows(db):
    con = wh.connect(db)
    wh.replace_table(con, "features", pa.table({"probe_id": ["p1", "p2"], "feature_id": pa.array([1, 2], pa.int32()),
                                                "activation": [0.5, 1.5]}))
    before = rows(con, "features", "probe_id")
    bad = pa.table({"probe_id": ["p9"], "feature_id": ["not a number"], "activation": [2.0]})
    with pytest.raises(duckdb.ConversionException):
        wh.replace_table(con, "features", bad)
    assert rows(con, "features", "probe_id") == before
    with pytest.raises(duckdb.Error):
        wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A", line=["x", "y", "z"]))
    assert rows(con, "sft_pairs") == []


def test_failed_write_rolls_back_added_columns(db):
    con = wh.connect(db)
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A"))
    with pytest.raises(duckdb.Error):
        wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A", line=["x", "y", "z"], topic=["t"] * 3))
    assert "topic" not in [c[0] for c in con.execute("DESCRIBE smda.sft_pairs").fetchall()]
    assert len(rows(con, "sft_pairs")) == 3


def test_new_metadata_columns_are_added_and_visible_in_view(db):
    con = wh.connect(db)
    wh.apply_views(con)
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A", topic=["x", "y", "z"]))
    wh.replace_partition(con, "sft_pairs", "batch_id", "B",
                         make_sft("B", 2, difficulty=pa.array([1, 2], pa.int64()), empty=pa.nulls(2)))
    described = {c[0]: c[1] for c in con.execute("DESCRIBE smda.v_sft_pairs").fetchall()}
    assert described["topic"] == "VARCHAR" and described["difficulty"] == "BIGINT" and described["empty"] == "VARCHAR"
    got = dict(con.execute("SELECT pair_id, topic FROM smda.v_sft_pairs").fetchall())
    assert got == {"A-0": "x", "A-1": "y", "A-2": "z", "B-0": None, "B-1": None}


def test_unknown_table_is_created_from_first_write(db):
    con = wh.connect(db)
    wh.replace_table(con, "curation_runs", pa.table({"experiment_id": ["e"], "n_pairs": [3]}))
    assert con.execute("SELECT * FROM smda.curation_runs").fetchall() == [("e", 3)]
    with pytest.raises(SMDAError, match="invalid"):
        wh.replace_table(con, "x; DROP TABLE smda.probes", pa.table({"a": [1]}))


def test_every_view_exists_on_an_empty_warehouse_with_contract_columns(db):
    con = wh.connect(db)
    wh.apply_views(con)
    for view, cols in CONTRACT.items():
        described = [c[0] for c in con.execute(f"DESCRIBE smda.{view}").fetchall()]
        assert set(cols) <= set(described), (view, set(cols) - set(described))
        assert con.execute(f"SELECT count(*) FROM smda.{view}").fetchone() == (0,)
    wh.apply_views(con)  # re-applying is safe
    con.close()
    assert set(row_counts(db)) >= set(CONTRACT)


def test_apply_views_rolls_back_on_a_broken_file(db, tmp_path):
    con = wh.connect(db)
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "01_ok.sql").write_text("CREATE OR REPLACE VIEW smda.v_ok AS SELECT 1 AS x;")
    (sql / "02_bad.sql").write_text("CREATE OR REPLACE VIEW smda.v_bad AS SELECT nope FROM smda.probes;")
    with pytest.raises(SMDAError, match="02_bad.sql"):
        wh.apply_views(con, sql)
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'v_ok'").fetchone() == (0,)


# ---------- views on small data, against independent pandas computations ----------

LABELS = {1: "refusal words", 2: "weapons", 3: None, 4: "politeness"}


def fill(con, seed: int = 0):
    rng = np.random.default_rng(seed)
    cats = ["bio", "bio", "bio", "cyber", "cyber", "chat", "chat", "chat", "chat", "code"]
    harmful = [True, True, True, True, True, False, False, False, False, False]
    n = len(cats)
    pids = [f"q{i}" for i in range(n)]
    probes = pd.DataFrame({"probe_id": pids, "prompt": [f"prompt {i}" for i in range(n)], "category": cats,
                           "harmful": harmful, "refused": [None] * n, "content_hash": pids,
                           "probe_index": np.arange(n, dtype=np.int32)})
    scores = pd.DataFrame({"probe_id": pids, "behaviour": rng.normal(size=n), "refusal_prob": rng.uniform(size=n),
                           "refused": rng.uniform(size=n) > 0.5, "refused_source": "model",
                           "predicted": rng.normal(size=n), "heldout": [False] * n})
    contrib = pd.DataFrame([(p, f, rng.normal()) for p in pids for f in LABELS],
                           columns=["probe_id", "feature_id", "contribution"])
    labels = pd.DataFrame({"feature_id": [f for f, lab in LABELS.items() if lab], "label": [l for l in LABELS.values() if l],
                           "source": "test", "top_probes": "[]"})
    pairs = [f"s{i}" for i in range(14)]
    summary = pd.DataFrame({"pair_id": pairs, "batch_id": "A", "alignment": rng.normal(size=14),
                            "dominant_feature": rng.choice(list(LABELS), 14), "intended_features": "[1]",
                            "interference": rng.uniform(size=14), "flagged": rng.uniform(size=14) > 0.5,
                            "method": ["refit"] * 7 + ["linear"] * 7})
    attribution = pd.DataFrame([(p, "A", f, m, rng.normal(), 0.0, 0.0, 0.0, rng.normal())
                                for p in pairs for f in LABELS for m in ("refit", "linear")],
                               columns=["pair_id", "batch_id", "feature_id", "method", "delta_beta", "via_x", "via_y",
                                        "via_xy", "contribution"])
    arrow = lambda df: pa.Table.from_pandas(df, preserve_index=False)
    wh.replace_table(con, "probes", arrow(probes).cast(wh.TABLES["probes"]))
    wh.replace_table(con, "probe_scores", arrow(scores))
    wh.replace_table(con, "probe_contributions", arrow(contrib))
    wh.replace_table(con, "feature_labels", arrow(labels))
    wh.replace_partition(con, "pair_summary", "batch_id", "A", arrow(summary))
    wh.replace_partition(con, "pair_attribution", "batch_id", "A", arrow(attribution))
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A").set_column(0, "pair_id", pa.array(pairs[:3])))
    return probes, scores, contrib, summary, attribution


def test_category_gaps_match_pandas(db):
    con = wh.connect(db)
    wh.apply_views(con)
    probes, scores, contrib, *_ = fill(con)
    got = con.execute("SELECT * FROM smda.v_category_gaps").df()

    df = probes.merge(scores, on="probe_id")
    exp = (df.groupby(["category", "harmful"])
             .agg(n=("probe_id", "size"), mean_refusal_prob=("refusal_prob", "mean"),
                  mean_behaviour=("behaviour", "mean"), mean_predicted=("predicted", "mean"))
             .reset_index())
    exp["refusal_gap"] = exp["mean_refusal_prob"] - exp.groupby("harmful")["mean_refusal_prob"].transform("mean")
    exp = exp.sort_values(["harmful", "mean_refusal_prob"], ascending=[False, True]).reset_index(drop=True)

    assert list(got["category"]) == list(exp["category"])  # the view's order
    assert list(got["harmful"]) == list(exp["harmful"])
    assert list(got["n"]) == list(exp["n"])
    for col in ["mean_refusal_prob", "mean_behaviour", "mean_predicted", "refusal_gap"]:
        np.testing.assert_allclose(got[col].to_numpy(float), exp[col].to_numpy(float), rtol=1e-12, atol=1e-12)

    c = contrib.merge(probes[["probe_id", "category"]], on="probe_id")
    means = c.groupby(["category", "feature_id"])["contribution"].mean().reset_index()
    for _, row in got.iterrows():
        m = means[means.category == row.category].copy()
        m["key"] = -m["contribution"].abs()
        top = m.sort_values(["key", "feature_id"]).head(3)
        parts = [f"{int(f)}{' [' + LABELS[int(f)] + ']' if LABELS[int(f)] else ''} ({v:+.2f})"
                 for f, v in zip(top.feature_id, top.contribution)]
        assert row.top_features == "; ".join(parts)


def test_feature_top_pairs_ranks_match_a_sort(db):
    con = wh.connect(db)
    wh.apply_views(con)
    _, _, _, summary, attribution = fill(con)
    got = con.execute("SELECT feature_id, rank, pair_id, delta_beta, label FROM smda.v_feature_top_pairs").df()

    primary = attribution.merge(summary[["pair_id", "batch_id", "method"]], on=["pair_id", "batch_id", "method"])
    assert len(primary) == len(summary) * len(LABELS)
    for f in LABELS:
        sub = primary[primary.feature_id == f].assign(key=lambda d: -d.delta_beta.abs())
        exp = sub.sort_values(["key", "pair_id"]).head(10)
        g = got[got.feature_id == f].sort_values("rank")
        assert list(g["rank"]) == list(range(1, 11))
        assert list(g["pair_id"]) == list(exp["pair_id"])
        np.testing.assert_array_equal(g["delta_beta"].to_numpy(), exp["delta_beta"].to_numpy())
        assert set(g["label"].fillna("<none>")) == {LABELS[f] or "<none>"}


def test_pair_views_join_labels_and_pair_metadata(db):
    con = wh.connect(db)
    wh.apply_views(con)
    _, _, _, summary, _ = fill(con)
    inter = con.execute("SELECT pair_id, dominant_feature, dominant_label, prompt FROM smda.v_interference").df()
    assert set(inter.pair_id) == set(summary.pair_id[summary.flagged])
    for _, r in inter.iterrows():
        assert (r.dominant_label if isinstance(r.dominant_label, str) else None) == LABELS[r.dominant_feature]
        expected = {"s0": "p A-0", "s1": "p A-1", "s2": "p A-2"}.get(r.pair_id)  # fill() stores 3 pairs' text
        assert (r.prompt if isinstance(r.prompt, str) else None) == expected
    assert con.execute("SELECT count(*) FROM smda.v_pair_summary").fetchone() == (len(summary),)
    assert con.execute("SELECT count(*) FROM smda.v_pair_attribution").fetchone() == (len(summary) * len(LABELS) * 2,)


def test_features_view_drops_zero_activations_and_names_each_position(db):
    con = wh.connect(db)
    wh.apply_views(con)
    wh.replace_table(con, "features", pa.table({"probe_id": ["a", "a", "b"], "feature_id": pa.array([1, 2, 1], pa.int32()),
                                                "activation": [0.0, 2.0, 3.0]}))
    wh.replace_table(con, "feature_maxima", pa.table({"probe_id": ["a", "b"], "feature_id": pa.array([7, 1], pa.int32()),
                                                      "activation": [0.5, 0.0], "token_index": pa.array([3, 4], pa.int64())}))
    wh.replace_table(con, "readout_info", pa.table({"model": ["m"], "position": ["end_of_turn"]}))
    rows = con.execute("SELECT * FROM smda.v_features ORDER BY position, probe_id").fetchall()
    assert rows == [("a", 2, 2.0, "end_of_turn"), ("b", 1, 3.0, "end_of_turn"), ("a", 7, 0.5, "user_max")]


# ---------- read-only access ----------

@pytest.mark.parametrize("sql", ["INSERT INTO smda.features VALUES ('x', 1, 1.0)", "DROP TABLE smda.features",
                                 "DROP VIEW smda.v_features", "CREATE TABLE smda.t (a INTEGER)",
                                 "DELETE FROM smda.features", "UPDATE smda.features SET activation = 0"])
def test_query_refuses_writes_and_leaves_warehouse_unchanged(db, sql):
    con = wh.connect(db)
    wh.apply_views(con)
    wh.replace_table(con, "features", pa.table({"probe_id": ["a"], "feature_id": pa.array([1], pa.int32()),
                                                "activation": [2.0]}))
    con.close()
    before = query(db, "SELECT * FROM smda.v_features")
    with pytest.raises(SMDAError, match="read-only"):
        query(db, sql)
    assert query(db, "SELECT * FROM smda.v_features").equals(before)
    assert row_counts(db)["v_features"] == 1


def test_query_returns_arrow_with_bound_parameters(db):
    con = wh.connect(db)
    wh.apply_views(con)
    wh.replace_partition(con, "sft_pairs", "batch_id", "A", make_sft("A"))
    con.close()
    out = query(db, "SELECT pair_id FROM smda.v_sft_pairs WHERE pair_id = ?", ["A-1"])
    assert isinstance(out, pa.Table) and out.to_pylist() == [{"pair_id": "A-1"}]
    with pytest.raises(SMDAError, match="query failed"):
        query(db, "SELECT nope FROM smda.v_sft_pairs")


def test_ibis_connection_reads_a_view(db):
    con = wh.connect(db)
    wh.apply_views(con)
    wh.replace_table(con, "policy_features", pa.table({"feature_id": pa.array([7, 3], pa.int32()),
                                                       "rank": pa.array([1, 2], pa.int32()), "coef": [0.9, -0.2],
                                                       "mean": [0.0, 0.0], "std": [1.0, 1.0],
                                                       "direction": ["harmful", "harmless"]}))
    wh.replace_table(con, "feature_labels", pa.table({"feature_id": pa.array([7], pa.int32()), "label": ["refusal"]}))
    con.close()
    ib = ibis_connection(db)
    try:
        policy = ib.table("v_policy", database="smda")
        df = policy.order_by("rank").select("feature_id", "label", "coef").to_pandas()
        assert list(df.feature_id) == [7, 3] and df.label[0] == "refusal" and df.label.isna()[1]
        assert "v_policy" in ib.list_tables(database="smda")  # DuckDB 2 removed what ibis 12 calls here; see _DuckDB2Compat
        assert ib.sql("SELECT count(*) AS n FROM smda.v_policy").to_pyarrow().to_pylist() == [{"n": 2}]
        assert sum(b.num_rows for b in policy.to_pyarrow_batches()) == 2
        with pytest.raises(Exception, match="read-only"):
            ib.create_table("scratch", policy.to_pyarrow(), database="smda")
    finally:
        ib.disconnect()


def test_v_curation_shows_each_variant_as_the_mean_of_its_seeds(db):
    """A variant retrained with two seeds is one row of v_curation: the mean of its metrics (counted here by
    hand), the sample spread of its F1 and the number of seeds; the table keeps both seeds."""
    from smda_core.experiments.curation import Variant, experiment_rows

    metrics = lambda f1: {"correctness": f1 / 2, "precision": f1, "recall": 1.0, "f1": f1, "refusal_accuracy": f1,  # noqa: E731
                          "per_category": {}}
    variants = [Variant("base", 0, metrics(.5), [], 0), Variant("full", 9, metrics(.70), [], 0),
                Variant("full", 9, metrics(.76), [], 1), Variant("oracle:harmless_trigger", 8, metrics(.60), ["p1"], 0),
                Variant("oracle:harmless_trigger", 8, metrics(.66), ["p1"], 1)]
    con = wh.connect(db)
    wh.apply_views(con)
    wh.replace_partition(con, "curation", "experiment_id", "e1", experiment_rows("e1", "oracle", variants))
    assert con.execute("SELECT count(*) FROM smda.curation").fetchone() == (5,)
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT variant, f1, correctness, f1_sd, seeds, n_pairs FROM smda.v_curation WHERE experiment_id = 'e1'").fetchall()}
    assert set(got) == {"base", "full", "oracle:harmless_trigger"}
    for variant, (a, b) in {"full": (.70, .76), "oracle:harmless_trigger": (.60, .66)}.items():
        f1, correctness, sd, seeds, _ = got[variant]
        assert f1 == pytest.approx((a + b) / 2) and correctness == pytest.approx((a + b) / 4)
        assert sd == pytest.approx(abs(a - b) / 2 ** 0.5) and seeds == 2
    assert got["base"][2:4] == (0, 1)
