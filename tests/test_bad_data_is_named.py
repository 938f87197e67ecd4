"""Nothing silent: bad data is refused with its file, line and field, and a degenerate policy is named on the
command line, while the good data of the same run is computed and stored.

One small world: 60 demo probes, all labelled refused (no policy can beat the majority baseline), a policy
setting that keeps every feature with any contrast (k ≥ n), and a watched folder with one good file, one
that reuses a pair id of the good one, and one whose prompt is longer than the demo model's 96 positions.
"""

from __future__ import annotations


import pytest

from conftest import CACHE, smda
from smda_core.store.query import query
from test_incremental import _write_jsonl, demo_rows, demo_sources  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bad(tmp_path_factory, demo_rows):  # noqa: F811
    probes, pairs = demo_rows
    root = tmp_path_factory.mktemp("bad")
    inbox = root / "inbox"
    inbox.mkdir()
    _write_jsonl(root / "probes.jsonl", [{**p, "refused": True} for p in probes[:60]])
    _write_jsonl(inbox / "a.jsonl", pairs[:2])
    _write_jsonl(inbox / "b.jsonl", [{**pairs[2], "pair_id": pairs[1]["pair_id"]}])  # a's second id, other content
    long_prompt = " ".join(["please"] * 150)
    _write_jsonl(inbox / "c.jsonl", [{**pairs[3], "prompt": long_prompt}])
    config = root / "smda.yaml"
    config.write_text(f"data:\n  probes: {root / 'probes.jsonl'}\n  sft: []\nwatch:\n  folder: {inbox}\n"
                      f"demo:\n  cache_dir: {CACHE}\nwarehouse: {root / 'wh' / 'warehouse.duckdb'}\n"
                      "policy:\n  max_features: null\n  contrast_threshold: 0.0\n")
    out = smda("ingest", "--config", str(config), cwd=root)
    return root, pairs, out


def test_bad_data_is_refused_naming_file_line_and_field_and_the_rest_is_stored(bad):
    """Reproduces: a pair_id reused by another file and a prompt longer than the model's context were
    accepted without a word (the pair views joined two pairs under one id; the long pair was attributed
    with positions the model never saw); the run ended with exit 0."""
    root, pairs, out = bad
    assert out.returncode == 1, out.stdout
    lines = out.stdout.splitlines()
    reused = next((l for l in lines if "b.jsonl" in l and "failed" in l), "")
    assert "line 1" in reused and "pair_id" in reused and pairs[1]["pair_id"] in reused, out.stdout
    assert "a.jsonl" in reused and "line 2" in reused, reused  # both files and lines
    long = next((l for l in lines if "c.jsonl" in l and "failed" in l), "")
    assert "line 1" in long and "'prompt'" in long and "96" in long, out.stdout

    wh = root / "wh" / "warehouse.duckdb"
    stored = query(wh, "SELECT pair_id, source_file FROM smda.v_sft_pairs ORDER BY pair_id").to_pylist()
    assert [r["pair_id"] for r in stored] == sorted(p["pair_id"] for p in pairs[:2])
    assert all(r["source_file"].endswith("a.jsonl") for r in stored)
    assert query(wh, "SELECT count(*) AS n FROM smda.v_pair_summary")["n"][0].as_py() == 2


def test_a_degenerate_policy_is_named_on_the_command_line(bad):
    """Reproduces: a policy with more features than probes (k ≥ n) and a failed `beats_majority_baseline`
    check were reported only in Dagster's event log; the command line said nothing."""
    root, _, out = bad
    fit = query(root / "wh" / "warehouse.duckdb", "SELECT k, n_probes FROM smda.v_policy_fit").to_pylist()[0]
    assert fit["k"] >= fit["n_probes"] == 60
    warnings = [l for l in out.stdout.splitlines() if l.startswith("warning")]
    assert any(f"k={fit['k']}" in w and "n=60" in w and "max_features" in w for w in warnings), out.stdout
    assert any("beats_majority_baseline" in w and "majority baseline" in w for w in warnings), out.stdout


def test_dagster_logs_stay_quiet_unless_asked(bad):
    _, _, out = bad
    assert " - DEBUG - " not in out.stdout and "STEP_SUCCESS" not in out.stdout, out.stdout[:2000]
    assert len(out.stdout.splitlines()) < 60, out.stdout
