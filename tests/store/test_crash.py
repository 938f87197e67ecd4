"""Crashes and concurrency on a real DuckDB file: the loader killed mid-batch leaves no half batch, readers wait for
a writer instead of failing, and the one writer refuses a batch whose pair ids another active batch holds.

Batches are staged as the pipeline stages them (Parquet files and a manifest written last); the loader runs
in a separate process that is killed with SIGKILL between two of a batch's tables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import ROOT
from smda_core.store import warehouse as wh
from smda_core.store.query import query
from smda_core.store.staging import Stage, load_batches

TABLES = ["sft_pairs", "pair_summary", "pair_attribution", "pair_shifts"]


def stage_batch(stage: Stage, batch: str, source: str, value: float, ids: list[str], policy: str = "p1") -> dict:
    """Stage one batch: every table holds `value`, so old and new content are told apart."""
    n = len(ids)
    tables = {
        "sft_pairs": pa.table({"pair_id": ids, "batch_id": [batch] * n, "prompt": [f"p {value}"] * n,
                               "response": ["r"] * n, "content_hash": [f"h{i}{value}" for i in ids],
                               "source_file": [source] * n, "line": pa.array(range(1, n + 1), pa.int64())}),
        "pair_summary": pa.table({"pair_id": ids, "batch_id": [batch] * n, "alignment": [value] * n,
                                  "policy_version": [policy] * n}),
        "pair_attribution": pa.table({"pair_id": ids, "batch_id": [batch] * n, "feature_id": pa.array([1] * n, pa.int32()),
                                      "method": ["refit"] * n, "delta_beta": [value] * n, "policy_version": [policy] * n}),
        "pair_shifts": pa.table({"pair_id": ids, "batch_id": [batch] * n, "probe_id": ["q"] * n,
                                 "feature_id": pa.array([1] * n, pa.int32()), "dz": [value] * n, "policy_version": [policy] * n}),
    }
    for name, table in tables.items():
        stage.write_table(batch, name, table)
    return stage.commit(batch, TABLES, source_file=source, content_hash=f"c{value}", n_pairs=n, policy_version=policy)


@pytest.fixture
def loaded(tmp_path):
    """A warehouse holding batch A (value 1.0), and A staged again with value 2.0 (a recompute) for the loader."""
    path = tmp_path / "wh" / "warehouse.duckdb"
    stage = Stage(tmp_path / "wh" / "warehouse.files" / "staging")
    source = str(tmp_path / "a.jsonl")
    Path(source).write_text("{}\n")
    first = stage_batch(stage, "A", source, 1.0, ["a1", "a2"])
    with wh.session(path) as con:
        wh.apply_views(con)
        wh.replace_table(con, "policy_fit", pa.table({"policy_version": ["p1"]}))  # the policy the batches were computed against
        load_batches(con, stage, ["A"])
    second = stage_batch(stage, "A", source, 2.0, ["a1", "a2"])
    assert first["stage_id"] != second["stage_id"]
    return path, stage, source


def _values(path: Path) -> dict[str, set]:
    out = {}
    for table, column in (("pair_summary", "alignment"), ("pair_attribution", "delta_beta"), ("pair_shifts", "dz")):
        out[table] = set(query(path, f"SELECT {column} AS v FROM smda.{table} WHERE batch_id = 'A'")["v"].to_pylist())
    out["sft_pairs"] = {p.split()[-1] for p in query(path, "SELECT prompt FROM smda.sft_pairs")["prompt"].to_pylist()}
    return out


LOADER = """
import sys, time
from pathlib import Path
import smda_core.store.staging as staging
from smda_core.store import warehouse as wh

path, root, ready = sys.argv[1:4]
real, done = staging.replace_partition, []

def then_pause(con, name, *args, **kw):  # the kill point: after the second of the batch's tables
    n = real(con, name, *args, **kw)
    done.append(name)
    if len(done) == 2:
        Path(ready).write_text(",".join(done))
        time.sleep(120)
    return n

staging.replace_partition = then_pause
with wh.session(path) as con:
    staging.load_batches(con, staging.Stage(Path(root)), ["A"])
"""


def test_the_loader_killed_mid_batch_leaves_no_half_batch(loaded, tmp_path):
    path, stage, _ = loaded
    assert _values(path) == {t: {1.0} for t in ("pair_summary", "pair_attribution", "pair_shifts")} | {"sft_pairs": {"1.0"}}
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", LOADER, str(path), str(stage.root), str(ready)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the loader never reached the kill point"
            time.sleep(0.05)
        assert len(ready.read_text().split(",")) == 2  # two of the batch's tables were replaced, inside its transaction
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # Reopened (DuckDB replays its log): every table holds the old batch, and the registry the old stage.
    assert _values(path) == {t: {1.0} for t in ("pair_summary", "pair_attribution", "pair_shifts")} | {"sft_pairs": {"1.0"}}
    registry = query(path, "SELECT stage_id, n_pairs FROM smda.sft_batches WHERE batch_id = 'A'").to_pylist()
    assert registry[0]["stage_id"] != stage.manifest("A")["stage_id"] and registry[0]["n_pairs"] == 2

    with wh.session(path) as con:  # the next load completes the batch, all tables at once
        report = load_batches(con, stage, ["A"])
    assert report.loaded == ["A"]
    assert _values(path) == {t: {2.0} for t in ("pair_summary", "pair_attribution", "pair_shifts")} | {"sft_pairs": {"2.0"}}


WRITER = """
import sys, time
from pathlib import Path
import pyarrow as pa
from smda_core.store import warehouse as wh

path, ready = sys.argv[1:3]
with wh.session(path) as con:
    wh.replace_table(con, "validation", pa.table({"check": ["lds"], "spearman": [0.5]}))
    Path(ready).write_text("holding")
    time.sleep(1.5)
    wh.replace_table(con, "validation", pa.table({"check": ["lds"], "spearman": [0.75]}))
"""


def test_a_reader_waits_for_a_writer_instead_of_failing(loaded, tmp_path):
    path, _, _ = loaded
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ready)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        rows = query(path, "SELECT spearman FROM smda.v_validation").to_pylist()  # no "Could not set lock on file"
        waited = time.monotonic() - started
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0
    assert rows == [{"spearman": 0.75}]  # the writer's session ended first: its last write, never a half state
    assert waited > 0.5


def test_the_one_writer_refuses_a_batch_that_reuses_an_active_pair_id(loaded, tmp_path):
    """Two batches computed at once each saw the other's pairs not yet loaded; the loader is the last check."""
    path, stage, source = loaded
    other = str(tmp_path / "b.jsonl")
    Path(other).write_text("{}\n")
    stage_batch(stage, "B", other, 3.0, ["b1", "a2"])  # a2 is A's
    stage_batch(stage, "C", other.replace("b.jsonl", "c.jsonl"), 4.0, ["c1"])
    Path(other.replace("b.jsonl", "c.jsonl")).write_text("{}\n")
    with wh.session(path) as con:
        report = load_batches(con, stage, ["A", "B", "C"])
    assert report.loaded == ["A", "C"] and list(report.refused) == ["B"]
    why = report.refused["B"]
    assert "b.jsonl, line 2, field 'pair_id'" in why and "'a2'" in why and "a.jsonl line 2" in why, why
    assert query(path, "SELECT count(*) AS n FROM smda.v_sft_pairs WHERE batch_id = 'B'")["n"][0].as_py() == 0
    ids = query(path, "SELECT pair_id FROM smda.v_pair_summary")["pair_id"].to_pylist()
    assert sorted(ids) == ["a1", "a2", "c1"]
