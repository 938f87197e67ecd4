"""The query path is read-only: one SELECT on a locked-down connection; no files, extensions, settings or writes."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from smda_core.errors import SMDAError
from smda_core.store import warehouse as wh
from smda_core.store.query import ibis_connection, open_read_only, query, row_counts

PAIRS = [("A-1", "A", "how do I bake bread", "like this", "h1"),
         ("A-2", "A", "how do I pick a lock", "I can't help", "h2"),
         ("A-3", "A", "name a colour", "blue", "h3")]
SUMMARY = {"A-1": (0.5, 0.01, 7), "A-2": (-0.25, -0.02, 3), "A-3": (0.125, 0.0, 7)}  # alignment, dy_harmful, dominant


@pytest.fixture
def db(tmp_path):
    """A real warehouse file: schema, views, three SFT pairs with their summary, a two-feature policy."""
    path = tmp_path / "warehouse" / "warehouse.duckdb"
    with wh.session(path) as con:
        wh.ensure_schema(con)
        wh.apply_views(con)
        wh.replace_table(con, "sft_pairs", pa.table({
            "pair_id": [p[0] for p in PAIRS], "batch_id": [p[1] for p in PAIRS], "prompt": [p[2] for p in PAIRS],
            "response": [p[3] for p in PAIRS], "content_hash": [p[4] for p in PAIRS]}))
        wh.replace_table(con, "pair_summary", pa.table({
            "pair_id": list(SUMMARY), "batch_id": ["A"] * 3,
            "alignment": [v[0] for v in SUMMARY.values()], "dy_harmful": [v[1] for v in SUMMARY.values()],
            "dominant_feature": pa.array([v[2] for v in SUMMARY.values()], pa.int32())}))
        wh.replace_table(con, "policy_features", pa.table({
            "feature_id": pa.array([7, 3], pa.int32()), "rank": pa.array([1, 2], pa.int32()), "coef": [0.9, -0.2]}))
        wh.replace_table(con, "feature_labels", pa.table({"feature_id": pa.array([7], pa.int32()), "label": ["refusal"]}))
    return path


def _refused(db, sql: str, *phrases: str) -> str:
    with pytest.raises(SMDAError) as info:
        query(db, sql)
    message = str(info.value)
    assert "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    return message


# ---------- refused ----------

def test_copy_to_a_file_is_refused_and_writes_nothing(db, tmp_path):
    out = tmp_path / "x.csv"
    _refused(db, f"COPY (SELECT 1) TO '{out}'", "one read-only SELECT", "got COPY", "--format csv|json|parquet --out FILE")
    assert not out.exists()


def test_copy_into_the_warehouse_files_folder_is_refused(db):
    artifacts = db.with_name(db.stem + ".files") / "artifacts"
    artifacts.mkdir(parents=True)
    target = artifacts / "policy.pkl"
    _refused(db, f"COPY (SELECT * FROM smda.v_policy) TO '{target}' (FORMAT csv)", "got COPY")
    assert not target.exists() and not any(artifacts.iterdir())


def test_export_database_is_refused_and_creates_nothing(db, tmp_path):
    dump = tmp_path / "dump"
    _refused(db, f"EXPORT DATABASE '{dump}'", "got EXPORT", "writes the database out")
    assert not dump.exists()


@pytest.mark.parametrize("sql", ["SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/passwd')",
                                 "SELECT * FROM glob('/etc/*')", "SELECT * FROM read_parquet('/etc/passwd')",
                                 "SELECT * FROM '/etc/passwd.csv'",
                                 "WITH f AS (SELECT * FROM read_blob('/etc/hostname')) SELECT count(*) FROM f"])
def test_file_reading_functions_fail_with_file_access_off(db, sql):
    _refused(db, sql, "file access is off for queries")


def test_attach_is_refused_and_creates_no_file(db, tmp_path):
    other = tmp_path / "other.duckdb"
    _refused(db, f"ATTACH '{other}' AS o", "got ATTACH", "another database file")
    assert not other.exists()


@pytest.mark.parametrize("sql, phrases", [
    ("INSTALL httpfs", ["got INSTALL (LOAD)", "extension"]),
    ("LOAD httpfs", ["got LOAD", "extension"]),
    ("SET threads=1", ["got SET", "settings are locked"]),
    ("RESET threads", ["got RESET (SET)", "settings are locked"]),
    ("SET lock_configuration = false", ["got SET"]),
    ("PRAGMA threads=1", ["got PRAGMA"]),
    ("CHECKPOINT", ["got CHECKPOINT (CALL)"]),
    ("CREATE TABLE smda.t AS SELECT 1 AS a", ["got CREATE", "read-only"]),
    ("INSERT INTO smda.sft_pairs (pair_id) VALUES ('x')", ["got INSERT", "read-only"]),
    ("SELECT 1; SELECT 2", ["got 2 statements (SELECT, SELECT)"]),
    ("SELECT 1; COPY (SELECT 1) TO 'x.csv'", ["got 2 statements (SELECT, COPY)"]),
    ("", ["got no statement"]),
])
def test_anything_but_one_select_is_refused(db, sql, phrases):
    _refused(db, sql, "smda query runs one read-only SELECT", *phrases)


def test_a_write_hidden_in_a_select_still_fails_read_only(db):
    _refused(db, "WITH x AS (INSERT INTO smda.sft_pairs (pair_id) VALUES ('x') RETURNING *) SELECT * FROM x",
             "read-only")
    assert query(db, "SELECT count(*) AS n FROM smda.sft_pairs").to_pylist() == [{"n": 3}]


def test_errors_are_one_line(db):
    message = _refused(db, "SELECT nope FROM smda.v_sft_pairs", "query failed")
    assert "LINE 1" not in message


def test_the_connection_itself_is_locked_down(db):
    con = open_read_only(db)
    try:
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', 'lock_configuration', "
            "'autoinstall_known_extensions', 'autoload_known_extensions', 'allow_community_extensions', "
            "'access_mode')").fetchall())
        assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                            "autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                            "allow_community_extensions": "false", "access_mode": "read_only"}
        with pytest.raises(Exception, match="locked"):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()


# ---------- still works ----------

def test_join_of_two_views(db):
    rows = query(db, "SELECT p.pair_id, p.prompt, s.alignment FROM smda.v_sft_pairs p "
                     "JOIN smda.v_pair_summary s USING (pair_id) ORDER BY p.pair_id").to_pylist()
    assert rows == [{"pair_id": p[0], "prompt": p[2], "alignment": SUMMARY[p[0]][0]} for p in PAIRS]


def test_cte_window_function_and_parameters(db):
    sql = """WITH s AS (SELECT pair_id, dominant_feature, alignment FROM smda.v_pair_summary)
             SELECT pair_id, row_number() OVER (PARTITION BY dominant_feature ORDER BY alignment DESC) AS rn,
                    sum(alignment) OVER (PARTITION BY dominant_feature) AS total
             FROM s WHERE pair_id <> ? ORDER BY pair_id"""
    rows = query(db, sql, ["A-2"]).to_pylist()
    assert rows == [{"pair_id": "A-1", "rn": 1, "total": 0.625}, {"pair_id": "A-3", "rn": 2, "total": 0.625}]


def test_row_counts(db):
    counts = row_counts(db)
    assert counts["v_sft_pairs"] == 3 and counts["v_pair_summary"] == 3 and counts["v_policy"] == 2


def test_a_second_query_connection_shares_the_locked_database(db):
    con = open_read_only(db)
    try:
        assert query(db, "SELECT count(*) AS n FROM smda.v_policy").to_pylist() == [{"n": 2}]
        assert row_counts(db)["v_policy"] == 2
    finally:
        con.close()


def test_curation_sql_rule_goes_through_the_guard(db):
    import numpy as np

    from smda_core.experiments import curation

    ids = np.asarray([p[0] for p in PAIRS])
    t = curation.PairTable(ids, np.asarray([False, True, False]), None, np.zeros(3, bool))

    def run(sql):  # what smda_assets.curate passes
        return query(db, sql).column(0).to_pylist()

    assert curation.select_drops("sql:SELECT pair_id FROM smda.v_pair_summary WHERE alignment < 0", t, sql=run) == ["A-2"]
    with pytest.raises(SMDAError, match="got COPY"):
        curation.select_drops(f"sql:COPY (SELECT pair_id FROM smda.v_sft_pairs) TO '{db.parent / 'x.csv'}'", t, sql=run)
    assert not (db.parent / "x.csv").exists()


# ---------- ibis ----------

def test_ibis_reads_a_view_and_cannot_copy_or_set(db, tmp_path):
    ib = ibis_connection(db)
    try:
        df = ib.table("v_policy", database="smda").order_by("rank").select("feature_id", "label").to_pandas()
        assert list(df.feature_id) == [7, 3] and df.label[0] == "refusal"
        out = tmp_path / "ibis.csv"
        with pytest.raises(Exception, match="disabled by configuration"):
            ib.raw_sql(f"COPY (SELECT 1) TO '{out}'")
        assert not out.exists()
        with pytest.raises(Exception, match="locked"):
            ib.raw_sql("SET threads = 1")
        with pytest.raises(Exception, match="disabled by configuration"):
            ib.read_csv("/etc/passwd")
        [(tz,)] = ib.raw_sql("SELECT current_setting('TimeZone')").fetchall()
        assert tz == "UTC"
        second = ibis_connection(db)  # while the first holds the (locked) database open
        try:
            assert second.table("v_sft_pairs", database="smda").count().to_pyarrow().as_py() == 3
        finally:
            second.disconnect()
    finally:
        ib.disconnect()


# ---------- the CLI ----------

def _cli(*args: str):
    from smda_assets.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_cli_query_writes_the_rows(db, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    result = _cli("query", "SELECT pair_id, prompt FROM smda.v_sft_pairs ORDER BY pair_id",
                  "--warehouse", str(db), "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    want = [{"pair_id": p[0], "prompt": p[2]} for p in PAIRS]
    if fmt == "csv":
        with out.open(newline="") as fh:
            assert list(csv.DictReader(fh)) == want
    elif fmt == "json":
        assert json.loads(out.read_text()) == want
    else:
        assert pq.read_table(out).to_pylist() == want


def test_cli_csv_writes_list_and_struct_columns_as_json(db, tmp_path):
    """Reproduces: `smda query --format csv` crashed on a LIST column (Arrow's CSV writer has no lists)."""
    out = tmp_path / "out.csv"
    result = _cli("query", "SELECT pair_id, [1, 2] AS xs, {'a': pair_id} AS s FROM smda.v_sft_pairs ORDER BY pair_id LIMIT 1",
                  "--warehouse", str(db), "--format", "csv", "--out", str(out))
    assert result.exit_code == 0, result.output
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"pair_id": "A-1", "xs": "[1, 2]", "s": '{"a": "A-1"}'}]
    printed = _cli("query", "SELECT [1, 2] AS xs", "--warehouse", str(db), "--format", "csv")
    assert printed.exit_code == 0 and printed.output.splitlines()[1] == '"[1, 2]"', printed.output


@pytest.mark.parametrize("sql, phrase", [("COPY (SELECT 1) TO '{tmp}/x.csv'", "got COPY"),
                                         ("SELECT * FROM read_csv('/etc/passwd')", "file access is off"),
                                         ("SELECT [1, 2] AS xs; SELECT 2", "got 2 statements")])
def test_cli_prints_a_refusal_on_one_line_and_exits_1(db, tmp_path, sql, phrase):
    result = _cli("query", sql.format(tmp=tmp_path), "--warehouse", str(db))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], result.output
    assert not (tmp_path / "x.csv").exists()
