"""Engines of the pair steps (smda_core.execution): shards change nothing, Ray equals local, a dead worker is retried.

The Ray tests start a local Ray (2 worker processes, no dashboard) and skip, saying why, where Ray is
not installed (`pip install -e '.[ray]'`; the Makefile's venv installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import CACHE
from smda_core import inputs
from smda_core.execution import ShardError, ShardStore, plan_shards
from smda_core.execution.shards import exact_shift_step
from smda_core.model.measurements import PairShifts

N_PAIRS = 5
SHARD = 2
VIEWS = {  # view → its key columns (rows compared in this order)
    "v_sft_pairs": ["pair_id"],
    "v_pair_summary": ["pair_id"],
    "v_pair_attribution": ["pair_id", "feature_id", "method"],
    "v_pair_shifts": ["pair_id", "probe_id", "feature_id"],
    "v_interference": ["pair_id"],
    "v_pair_mechanism": ["pair_id", "score", "feature_id"],
}


def _pairs(runtime, n=N_PAIRS):
    from smda_core.sources import resolve_sources

    return inputs.read_sft_pairs(resolve_sources(runtime.config, progress=False).sft[0], batch_id="b").slice(0, n)


def _few_probes(runtime, n=60):
    """The runtime with its first `n` probes only: the pair step re-measures fewer probes (invariances hold for any set)."""
    import dataclasses

    return dataclasses.replace(runtime, encoded=runtime.encoded[:n], probes=runtime.probes.slice(0, n))


def _equal_shifts(a: PairShifts, b: PairShifts, atol=1e-9):
    assert a.pair_ids == b.pair_ids
    for name in (*PairShifts.ARRAYS, "response_refuses"):
        np.testing.assert_allclose(getattr(a, name) if name != "seconds" else 0, getattr(b, name) if name != "seconds" else 0,
                                   rtol=0, atol=atol, err_msg=name)
    dense = [s.prompt_features(int(max(a.prompt_coo[1].max(), b.prompt_coo[1].max())) + 1) for s in (a, b)]
    np.testing.assert_allclose(dense[0], dense[1], rtol=0, atol=atol)


def test_shards_cover_every_pair_once_in_order():
    ids = [f"p{i}" for i in range(8)]
    shards = plan_shards(ids, 3)
    assert [s.pair_ids for s in shards] == [("p0", "p1", "p2"), ("p3", "p4", "p5"), ("p6", "p7")]
    assert [pid for s in shards for pid in s.pair_ids] == ids
    assert len(plan_shards(ids, 100)) == 1 and plan_shards([], 3) == []


def test_the_engine_is_validated_and_changes_no_data_version():
    """A misspelt engine is named; a CUDA model on Ray must ask Ray for GPUs; the engine is in no data version."""
    from conftest import demo_config
    from smda_core.config import load_config
    from smda_core.errors import ConfigError
    from smda_core.store.versions import input_versions

    with pytest.raises(ConfigError, match=r"execution\.engine.*did you mean 'ray'"):
        load_config(None, execution={"engine": "rey"})
    with pytest.raises(ConfigError, match="gpus_per_task"):
        load_config(None, model={"device": "cuda"}, execution={"engine": "ray"})
    local = demo_config()
    on_ray = local.replace(execution=local.execution.replace(engine="ray", address="auto", gpus_per_task=1))
    assert input_versions(local) == input_versions(on_ray)  # same results: switching engines recomputes nothing


def test_shard_boundaries_change_nothing(runtime, policy, tmp_path):
    """Shards measured apart, written, read back and concatenated equal one run over every pair (float64, 1e-9)."""
    pairs = _pairs(runtime, 3)
    runtime = _few_probes(runtime)
    step = lambda rt, p: exact_shift_step(rt, p, feature_ids=policy.feature_ids, settings=runtime.config.shifts)  # noqa: E731
    whole = step(runtime, pairs)
    store = ShardStore(tmp_path / "shards")
    shards = plan_shards(pairs["pair_id"].to_pylist(), 2)
    for s in shards:
        store.write(s, step(runtime, pairs.slice(s.start, s.stop - s.start)), seconds=0.0)
    _equal_shifts(whole, store.gather(shards, PairShifts))
    assert whole.settings.dtype == "float64"


def test_an_incomplete_shard_is_never_read(runtime, policy, tmp_path):
    pairs = _pairs(runtime, 2)
    runtime = _few_probes(runtime)
    store = ShardStore(tmp_path / "shards")
    shards = plan_shards(pairs["pair_id"].to_pylist(), 1)
    store.write(shards[0], exact_shift_step(runtime, pairs.slice(0, 1), feature_ids=policy.feature_ids,
                                            settings=runtime.config.shifts), seconds=0.0)
    (store.folder / f"{shards[1].name}.npz").write_bytes(b"half a file")  # a worker died before its manifest
    with pytest.raises(ShardError, match=shards[1].pair_ids[0]):
        store.gather(shards, PairShifts)


def _gradient_runtime(runtime, n_probes=40):
    """The runtime with few probes and the gradient tier in float64 (so that shard results can agree to 1e-9)."""
    import dataclasses

    cfg = runtime.config
    cfg = cfg.replace(gradient=cfg.gradient.replace(dtype="float64", pair_batch=2))
    return dataclasses.replace(_few_probes(runtime, n_probes), config=cfg)


def test_gradient_shards_reading_g_from_its_file_equal_one_run(runtime, policy, tmp_path):
    """The gradient tier over shards of 2, each step reading G from the file the batch's first step wrote (as a Ray
    worker does), equals one run of the tier with G computed in place (float64, 1e-9). A second preparation reads
    the file instead of computing G again; a G file for other inputs is refused, naming the file."""
    from smda_core.api import gradient_functionals
    from smda_core.errors import SMDAError
    from smda_core.execution.shards import gradient_shift_step, prepare_gradient_tier, release_gradient_tier
    from smda_core.model.gradients import ProbeGradients, measure_gradient_shifts
    from smda_core.model.measurements import GradientShifts

    rt = _gradient_runtime(runtime)
    pairs = _pairs(rt, 5)
    weights = gradient_functionals(policy)[:, : len(rt.encoded)]
    whole, G = measure_gradient_shifts(rt.model, rt.tokenizer, rt.sae, rt.probe_setup(), policy.feature_ids, weights,
                                       inputs.pair_rows(pairs), rt.config.shifts, rt.config.gradient, progress=False)
    folder = tmp_path / "g"
    key, g_file = prepare_gradient_tier(rt, feature_ids=policy.feature_ids, x_weights=weights, folder=str(folder))
    release_gradient_tier()  # the shard steps below read G from the file
    stored = ProbeGradients.load(Path(g_file), key=key)
    np.testing.assert_array_equal(stored.logr.numpy(), G.logr.numpy())
    store = ShardStore(tmp_path / "shards")
    shards = plan_shards(pairs["pair_id"].to_pylist(), SHARD)
    for s in shards:
        store.write(s, gradient_shift_step(rt, pairs.slice(s.start, s.stop - s.start), feature_ids=policy.feature_ids,
                                           g_file=g_file, key=key), seconds=0.0)
    release_gradient_tier()
    gathered = store.gather(shards, GradientShifts)
    assert gathered.pair_ids == whole.pair_ids
    for name in ("dY", "dP", "via_x", "prompt_X", "response_refuses", "X_base", "y_base"):
        np.testing.assert_allclose(getattr(gathered, name), getattr(whole, name), rtol=0, atol=1e-9, err_msg=name)
    assert np.abs(whole.dY).max() > 0  # the shifts are not all zero

    mtime = Path(g_file).stat().st_mtime_ns
    assert prepare_gradient_tier(rt, feature_ids=policy.feature_ids, x_weights=weights, folder=str(folder)) == (key, g_file)
    release_gradient_tier()
    assert Path(g_file).stat().st_mtime_ns == mtime and len(list(folder.glob("G-*.safetensors"))) == 1
    with pytest.raises(SMDAError, match=Path(g_file).name):
        ProbeGradients.load(Path(g_file), key="another")


# ---- Ray -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (the Makefile's venv does)")
    from smda_core.execution.ray_engine import _local_runtime_env

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=_local_runtime_env(None))
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def _task_threads():
    """torch at the threads Ray gives a shard task (`execution.cpus_per_task`, its OMP_NUM_THREADS), for the local run.

    A float64 step done with 2 threads and with 1 differs in its last bits (the library's reductions split otherwise),
    and the mechanism fits carry that to about 1e-9: the engines are compared at the same threads per pair step,
    so that the one difference left is the engine.
    """
    import torch

    from smda_core.config import ExecutionSettings

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(ExecutionSettings().cpus_per_task)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, runtime):
    """The demo's first N_PAIRS pairs in one SFT file, materialised with `engine: local`, and its pair views then."""
    from smda_assets.run import materialize_all

    from smda_core.sources import resolve_sources

    root = tmp_path_factory.mktemp("engines")
    demo = [json.loads(line) for line in open(resolve_sources(runtime.config, progress=False).sft[0])][:N_PAIRS]
    sft = root / "sft" / "batch_a.jsonl"
    inputs.write_jsonl(sft, demo)
    cfg = root / "smda.yaml"
    _write_config(cfg, sft, root / "warehouse.duckdb", "local")
    with _task_threads():
        materialize_all(str(cfg))
    return cfg, sft, root / "warehouse.duckdb", _views(root / "warehouse.duckdb")


def _write_config(cfg: Path, sft: Path, wh: Path, engine: str, extra: dict | None = None) -> None:
    base = {"demo": {"cache_dir": CACHE}, "data": {"sft": [str(sft)]}, "warehouse": str(wh),
            "execution": {"engine": engine, "shard_size": SHARD, "max_retries": 2}}
    for section, values in (extra or {}).items():
        base[section] = {**base.get(section, {}), **values}
    cfg.write_text(yaml.safe_dump(base))


def _views(wh: Path) -> dict:
    from smda_core.store.query import query

    return {view: query(wh, f"SELECT * FROM smda.{view} ORDER BY {', '.join(keys)}").to_pandas() for view, keys in VIEWS.items()}


def _views_equal(left_views: dict, right_views: dict, atol=1e-9):
    for view in VIEWS:
        left, right = left_views[view], right_views[view]
        assert len(left) == len(right) and (len(left) > 0 or view == "v_interference"), view  # few pairs: maybe none flagged
        assert list(left.columns) == list(right.columns), view
        for col in left.columns:
            if col == "seconds":  # how long a pair's step took: the one column that may differ
                continue
            x, y = left[col], right[col]
            if x.dtype.kind == "f":
                np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=0, atol=atol, err_msg=f"{view}.{col}")
            elif x.dtype.kind not in "mM" and not col.endswith("_at"):
                assert x.astype(str).tolist() == y.astype(str).tolist(), f"{view}.{col}"


def _rerun_on_ray(warehouse, during=None) -> tuple[str, object]:
    """The warehouse's batch measured again with `engine: ray` (shards of SHARD pairs) and loaded afresh.

    `during(resource, batch)` starts before the batch runs and is joined after (a thread that kills a worker).
    The batch's loaded record is dropped first, so the loader replaces its rows even if the bytes are the same.
    """
    from smda_assets.resources import SMDAResource
    from smda_assets.run import BATCH_KEYS, _run, default_instance
    from smda_core.store.warehouse import session

    cfg, sft, wh, _ = warehouse[:4]
    _write_config(cfg, sft, wh, "ray", warehouse[4] if len(warehouse) > 4 else None)
    resource = SMDAResource(config_path=str(cfg))
    instance = default_instance(resource)
    batch = instance.get_dynamic_partitions("sft_batches")[0]
    thread = threading.Thread(target=during, args=(resource, batch)) if during else None
    if thread:
        thread.start()
    try:
        _run(resource, instance, BATCH_KEYS, partition=batch)
    finally:
        if thread:
            thread.join()
    with session(wh) as con:
        con.execute("DELETE FROM smda.sft_batches WHERE batch_id = ?", [batch])
    _run(resource, instance, ["loaded_batches", "views"])
    return batch, instance


def test_ray_engine_views_equal_local_engine_views(local_ray, warehouse):
    """The demo's pairs in shards of 2 as Ray tasks on 2 workers: every pair view equals the local engine's to 1e-9."""
    from smda_core.store.query import query

    batch, _ = _rerun_on_ray(warehouse)
    wh = warehouse[2]
    shards = sorted(p.name for p in (wh.parent / "warehouse.files" / "staging" / batch / "shards").glob("*.json")
                    if ".started-" not in p.name)
    assert shards == [f"shard-{i:05d}.json" for i in range(-(-N_PAIRS // SHARD))]
    _views_equal(warehouse[3], _views(wh))
    assert query(wh, "SELECT count(*) AS n FROM smda.pair_summary")["n"][0].as_py() == N_PAIRS


@pytest.fixture(scope="module")
def gradient_warehouse(tmp_path_factory, runtime):
    """The gradient tier (float64, so that shards can agree to 1e-9; projected to 16 per side, a small G) with an exact
    sample of 2 pairs, on every fourth demo probe (G costs a backward pass per policy feature per chunk of probes),
    materialised with `engine: local`."""
    from smda_assets.run import materialize_all

    from smda_core.sources import resolve_sources

    root = tmp_path_factory.mktemp("engines-gradient")
    src = resolve_sources(runtime.config, progress=False)
    sft, probes = root / "sft" / "batch_a.jsonl", root / "probes.jsonl"
    inputs.write_jsonl(sft, [json.loads(line) for line in open(src.sft[0])][:N_PAIRS])
    inputs.write_jsonl(probes, [json.loads(line) for line in open(src.probes)][::4])
    extra = {"data": {"probes": str(probes)}, "shifts": {"method": "gradient"},
             "gradient": {"dtype": "float64", "pair_batch": 4, "projection": 16}, "validate": {"sample": 2}}
    cfg = root / "smda.yaml"
    _write_config(cfg, sft, root / "warehouse.duckdb", "local", extra)
    with _task_threads():
        materialize_all(str(cfg))
    return cfg, sft, root / "warehouse.duckdb", _views(root / "warehouse.duckdb"), extra


def test_gradient_tier_on_ray_equals_local_and_g_is_computed_once(local_ray, gradient_warehouse):
    """The gradient tier and its exact sample as Ray tasks (shards of 2 on 2 workers): every pair view and the method
    agreement equal the local engine's to 1e-9; G is read from the file the local run kept, not computed again."""
    from smda_core.store.query import query

    wh = gradient_warehouse[2]
    g_files = list((wh.parent / "warehouse.files" / "cache" / "probe-gradients").glob("G-*.safetensors"))
    assert len(g_files) == 1
    mtime = g_files[0].stat().st_mtime_ns
    agreement = query(wh, "SELECT * FROM smda.v_method_agreement ORDER BY ALL").to_pandas()
    batch, _ = _rerun_on_ray(gradient_warehouse)
    folder = wh.parent / "warehouse.files" / "staging" / batch
    assert sorted(p.name for p in (folder / "shards-gradient").glob("shard-*.json") if ".started-" not in p.name) == \
        [f"shard-{i:05d}.json" for i in range(-(-N_PAIRS // SHARD))]
    assert len(list((folder / "shards").glob("shard-*.npz"))) == 1  # the exact sample: 2 pairs, one shard
    assert g_files[0].stat().st_mtime_ns == mtime  # read, not written again
    _views_equal(gradient_warehouse[3], _views(wh))
    methods = query(wh, "SELECT DISTINCT method FROM smda.v_pair_attribution ORDER BY 1")["method"].to_pylist()
    assert "gradient" in methods and query(wh, "SELECT count(*) AS n FROM smda.pair_summary WHERE NOT sample")["n"][0].as_py() == N_PAIRS
    again = query(wh, "SELECT * FROM smda.v_method_agreement ORDER BY ALL").to_pandas()
    assert len(agreement) > 0 and len(again) == len(agreement)
    for col in agreement.columns:
        if agreement[col].dtype.kind == "f":
            # relative as well: a median relative error whose exact value is near zero (via_x of a feature the pair
            # barely moves) is of order 1e3, and 1e-9 of it is the engines' float64 rounding, not a difference
            np.testing.assert_allclose(again[col].to_numpy(), agreement[col].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=col)


def _kill_first_started(resource, batch, killed: list) -> None:
    """Kill (SIGKILL) the worker process that starts a shard of this run first, while it measures the shard."""
    since, deadline = time.time(), time.time() + 240
    folder = resource.files / "staging" / batch / "shards"
    while time.time() < deadline and not killed:
        for path in folder.glob("*.started-*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record["at"] > since:
                os.kill(record["pid"], signal.SIGKILL)
                killed.append(record)
                return
        time.sleep(0.05)


def test_a_worker_killed_mid_shard_is_retried_and_the_views_end_complete(local_ray, warehouse):
    """SIGKILL one Ray worker while it measures a shard: Ray reruns the shard, the batch loads whole, once, and
    its views still equal the local engine's."""
    import dagster as dg

    from smda_core.store.query import query

    killed: list = []
    batch, instance = _rerun_on_ray(warehouse, during=lambda resource, b: _kill_first_started(resource, b, killed))
    assert killed, "no shard started: nothing was killed"
    wh = warehouse[2]
    folder = wh.parent / "warehouse.files" / "staging" / batch / "shards"
    assert len(list(folder.glob(f"shard-{killed[0]['shard']:05d}.started-*.json"))) >= 2, "the killed shard was not run again"
    event = instance.get_latest_materialization_event(dg.AssetKey("pair_shifts"))
    assert event.asset_materialization.metadata["retried_shards"].value >= 1
    counts = query(wh, "SELECT count(*) AS n, count(DISTINCT pair_id) AS d FROM smda.pair_summary")
    assert counts["n"][0].as_py() == counts["d"][0].as_py() == N_PAIRS  # no duplicate, no missing pair
    _views_equal(warehouse[3], _views(wh))


def test_a_shard_that_fails_for_good_names_its_pairs(local_ray, runtime, policy, tmp_path):
    """An error in the step fails its shard without retry; the error names the shard's pair ids, nothing is gathered."""
    from smda_core.execution.ray_engine import run_shards
    from smda_core.sources import resolve_sources

    pairs = _pairs(runtime, 2)
    bad = pairs["pair_id"][1].as_py()

    def step(rt, p):  # a closure: Ray ships it by value
        if bad in p["pair_id"].to_pylist():
            raise ValueError(f"pair {bad} cannot be measured")
        return exact_shift_step(rt, p, feature_ids=policy.feature_ids, settings=rt.config.shifts)

    settings = runtime.config.execution.replace(engine="ray", shard_size=1, max_retries=1)
    with pytest.raises(ShardError) as err:
        run_shards(settings, runtime.config, resolve_sources(runtime.config, progress=False), step, pairs,
                   ShardStore(tmp_path / "shards"), PairShifts)
    assert err.value.shards == {1: [bad]}
    assert bad in str(err.value) and "cannot be measured" in str(err.value)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device (CI has none): GPU path skipped")
def test_a_pair_step_on_cuda_equals_the_cpu_step(runtime, policy):
    """`model.device: cuda` end to end through the pair step: the same shifts as on the CPU (float64, round-off)."""
    from smda_core.api import load_runtime

    cfg = runtime.config.replace(model=runtime.config.model.replace(device="cuda"))
    pairs = _pairs(runtime, 1)
    cpu, gpu = (exact_shift_step(rt, pairs, feature_ids=policy.feature_ids, settings=cfg.shifts)
                for rt in (runtime, load_runtime(cfg, progress=False)))
    _equal_shifts(cpu, gpu, atol=1e-6)


def test_screen_tier_materialises_every_pair_and_agrees_with_its_exact_sample(tmp_path_factory, runtime):
    """`shifts.method: screen` through the Dagster job: every pair gets a forward-only `screen_consistency` row
    (method 'screen', no Δβ rows of its own), and on the exact sample it equals the value the exact tier reads from
    its own forward pass; each pair's response type is the one the recipe wrote it as."""
    from smda_assets.run import materialize_all

    from smda_core.sources import resolve_sources
    from smda_core.store.query import query

    root = tmp_path_factory.mktemp("engines-screen")
    src = resolve_sources(runtime.config, progress=False)
    rows = [json.loads(line) for line in open(src.sft[0])][:N_PAIRS]
    sft, probes = root / "sft" / "batch_a.jsonl", root / "probes.jsonl"
    inputs.write_jsonl(sft, rows)
    inputs.write_jsonl(probes, [json.loads(line) for line in open(src.probes)][::4])
    cfg, wh = root / "smda.yaml", root / "warehouse.duckdb"
    _write_config(cfg, sft, wh, "local", {"data": {"probes": str(probes)}, "shifts": {"method": "screen"},
                                          "validate": {"sample": 2}})
    materialize_all(str(cfg))
    summary = query(wh, "SELECT pair_id, method, sample, screen_consistency, response_refuses FROM smda.pair_summary "
                        "ORDER BY pair_id, sample").to_pandas()
    screen = summary[summary["method"] == "screen"].set_index("pair_id")
    assert sorted(screen.index) == sorted(r["pair_id"] for r in rows)
    assert screen["screen_consistency"].notna().all() and not screen["sample"].any()
    sample = summary[summary["sample"]].set_index("pair_id")
    assert len(sample) == 2
    # the screen tier reads prompts in padded batches, the exact tier one by one: float32 activations agree to ~1e-6
    np.testing.assert_allclose(screen.loc[sample.index, "screen_consistency"], sample["screen_consistency"], rtol=0, atol=1e-5)
    by_hand = {r["pair_id"]: r["kind"].endswith("_refusal") for r in rows}  # the recipe's own label of each response
    assert screen["response_refuses"].astype(bool).to_dict() == by_hand
    n_attr = query(wh, "SELECT count(*) AS n FROM smda.v_pair_attribution WHERE method = 'screen'")["n"][0].as_py()
    assert n_attr == 0
