"""Nothing mixed: the pair views show only rows computed against the current policy, `smda stale` lists the
batches waiting for it, and two ingests at once end consistent.

One small world (test_incremental's Setup: 40 demo probes, one watched file of 1 pair, a real DuckDB
file and a persistent Dagster instance).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from smda_core.store.query import query
from test_incremental import Setup, _write_jsonl, demo_rows, demo_sources  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

PAIR_VIEWS = ["v_pair_attribution", "v_pair_summary", "v_feature_top_pairs", "v_interference", "v_pair_shifts",
              "v_pair_group_effects"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_rows):  # noqa: F811
    probes, pairs = demo_rows
    s = Setup(tmp_path_factory.mktemp("refit"), probes[:40])
    _write_jsonl(s.inbox / "a.jsonl", pairs[:1])
    report = s.ingest()
    assert not report.failed and len(report.ran) == 1
    s.batch = report.ran[0]
    s.base = s.config.read_text()
    return s


def _policy_features(s: Setup) -> set[int]:
    return set(query(s.warehouse, "SELECT feature_id FROM smda.v_policy")["feature_id"].to_pylist())


def _view_features(s: Setup) -> dict[str, set[int]]:
    out = {}
    for view, column in (("v_pair_attribution", "feature_id"), ("v_pair_shifts", "feature_id"),
                         ("v_feature_top_pairs", "feature_id"), ("v_pair_group_effects", "feature_id"),
                         ("v_pair_summary", "dominant_feature")):
        out[view] = set(query(s.warehouse, f"SELECT DISTINCT {column} AS f FROM smda.{view}")["f"].to_pylist())
    return out


def _smda(s: Setup, *args: str):
    from conftest import smda_here

    return smda_here(*args, "--config", str(s.config), env={"DAGSTER_HOME": s.home})


def test_after_a_refit_the_pair_views_show_only_rows_of_the_current_policy(world):
    """Reproduces: after a policy refit `v_policy` changed at once while the pair rows were replaced batch by
    batch; a crash in between (and any reader during a normal run) saw pair rows for features no longer in
    the policy."""
    from smda_assets.run import _run
    from smda_assets.automation import PROBE_KEYS

    s = world
    before = _policy_features(s)
    assert all(v <= before and v for v in _view_features(s).values())

    s.config.write_text(s.base + "policy:\n  max_features: 3\n")
    assert _run(s.resource, s.instance, PROBE_KEYS) is None  # refitted; the run stops here (a crash, or a reader now)
    after = _policy_features(s)
    assert len(after) == 3 and before - after
    for view, features in _view_features(s).items():
        assert features <= after, f"{view} shows features no longer in the policy: {sorted(features - after)}"
    kept = query(s.warehouse, "SELECT count(*) AS n FROM smda.pair_summary WHERE batch_id = ?", [s.batch])["n"][0].as_py()
    assert kept == 1  # the rows stay on record until their batch is recomputed

    out = _smda(s, "stale")
    assert out.returncode == 0, out.stdout
    assert "waiting for the current policy" in out.stdout and s.batch in out.stdout, out.stdout

    # Shifts measured against the old policy are never attributed with the new one.
    error = _run(s.resource, s.instance, ["pair_attribution", "pair_summary"], partition=s.batch, raise_on_error=False)
    assert error is not None and "measured against policy" in error and "pair_shifts" in error, error

    report = s.ingest()
    assert report.ran == [s.batch] and not report.failed
    features = _view_features(s)
    assert all(v and v <= after for v in features.values()), features
    assert query(s.warehouse, "SELECT count(*) AS n FROM smda.v_pair_summary")["n"][0].as_py() == 1
    assert "waiting for the current policy" not in _smda(s, "stale").stdout
    s.config.write_text(s.base)


def test_two_ingests_at_once_end_consistent(world):
    s = world
    s.config.write_text(s.base + "policy:\n  seed: 3\n")  # a new policy version: the batch is recomputed
    env = {"DAGSTER_HOME": str(s.home), "PYTHONPATH": str(ROOT)}
    import os

    cmd = [sys.executable, "-m", "smda_assets.cli", "ingest", "--config", str(s.config)]
    procs = [subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("computed: none" in o for o in outs) >= 1, outs  # the second found the first's work done
    keys = {"v_sft_pairs": "pair_id", "v_pair_summary": "pair_id", "v_pair_attribution": "pair_id, feature_id, method"}
    for view, key in keys.items():
        dup = query(s.warehouse, f"SELECT {key}, count(*) AS n FROM smda.{view} GROUP BY ALL HAVING count(*) > 1")
        assert dup.num_rows == 0, (view, dup.to_pylist())
    assert query(s.warehouse, "SELECT count(*) AS n FROM smda.v_pair_summary")["n"][0].as_py() == 1
    used = query(s.warehouse, "SELECT DISTINCT policy_version FROM smda.pair_summary WHERE batch_id = ?", [s.batch])
    current = query(s.warehouse, "SELECT policy_version FROM smda.v_policy_fit")
    assert used["policy_version"].to_pylist() == current["policy_version"].to_pylist()
    s.config.write_text(s.base)
