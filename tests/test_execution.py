"""Engines of the pair steps (smda_core.execution): shards change nothing, Ray equals local, a dead worker is retried.

The Ray tests start a local Ray (2 worker processes, no dashboard) and skip, saying why, where Ray is
not installed (`pip install -e '.[ray]'`; the Makefile's venv installs it).
"""

from __future__ import annotations

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


# ---- Ray -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (the Makefile's venv does)")
    from smda_core.execution.ray_engine import _local_runtime_env

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=_local_runtime_env(None))
    yield ray
    ray.shutdown()


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
    materialize_all(str(cfg))
    return cfg, sft, root / "warehouse.duckdb", _views(root / "warehouse.duckdb")


def _write_config(cfg: Path, sft: Path, wh: Path, engine: str) -> None:
    cfg.write_text(yaml.safe_dump({"demo": {"cache_dir": CACHE}, "data": {"sft": [str(sft)]}, "warehouse": str(wh),
                                   "execution": {"engine": engine, "shard_size": SHARD, "max_retries": 2}}))


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

    cfg, sft, wh, _ = warehouse
    _write_config(cfg, sft, wh, "ray")
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
