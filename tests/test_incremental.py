"""New SFT data over time: the watched-folder sensor, superseding, bad files, staleness, parallel batches.

One small world per module: the demo model with 90 of its probes and a watched folder of small
SFT files (2 pairs each), a real DuckDB file and a persistent Dagster instance in a temp dir.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from conftest import CACHE, demo_config
from smda_core.store.query import query

PAIR_TABLES = ["sft_pairs", "pair_summary", "pair_attribution", "pair_shifts", "pair_group_effects", "pair_group_shift"]
pytestmark = pytest.mark.slow


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def demo_sources():
    from smda_core.sources import resolve_sources

    return resolve_sources(demo_config(), progress=False)


@pytest.fixture(scope="module")
def demo_rows(demo_sources):
    probes = [json.loads(line) for line in Path(demo_sources.probes).read_text().splitlines()]
    pairs = [json.loads(line) for line in Path(demo_sources.sft[0]).read_text().splitlines()]
    random.Random(0).shuffle(probes)
    return probes[:90], pairs


class Setup:
    """A config (probe subset, watched folder, warehouse) and a persistent instance in one temp folder."""

    def __init__(self, root: Path, probes: list[dict], sae_path: str | None = None):
        self.root = root
        self.inbox = root / "inbox"
        self.inbox.mkdir(parents=True)
        self.probes = _write_jsonl(root / "probes.jsonl", probes)
        self.warehouse = root / "wh" / "warehouse.duckdb"
        sae = f"sae:\n  path: {sae_path}\n" if sae_path else ""
        self.config = root / "smda.yaml"
        self.config.write_text(f"data:\n  probes: {self.probes}\n  sft: []\nwatch:\n  folder: {self.inbox}\n{sae}"
                               f"demo:\n  cache_dir: {CACHE}\nwarehouse: {self.warehouse}\n")
        self.home = root / "dagster_home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.instance = dg.DagsterInstance.from_config(str(self.home))

    @property
    def resource(self):
        from smda_assets.resources import SMDAResource

        return SMDAResource(config_path=str(self.config), warehouse_path=str(self.warehouse))

    def ingest(self, **kw):
        from smda_assets.run import ingest

        return ingest(str(self.config), str(self.warehouse), self.instance, **kw)

    def batch_rows(self, table: str, batch: str) -> pa.Table:
        return query(self.warehouse, f"SELECT * FROM smda.{table} WHERE batch_id = ? ORDER BY ALL", [batch])

    def sensor(self):
        from smda_assets.automation import build_automation

        sensor = build_automation(self.resource.config().watch).sensor  # as the code location builds it
        context = dg.build_sensor_context(instance=self.instance, resources={"smda": self.resource})
        return sensor(context)

    def run_request(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        """Carry out a sensor's run request as the daemon would: add its partition, run its selection."""
        from smda_assets.definitions import defs

        return dg.materialize([*defs.assets, *defs.asset_checks], selection=request.asset_selection,
                              partition_key=request.partition_key, resources={"smda": self.resource},
                              instance=self.instance, raise_on_error=False)


@pytest.fixture(scope="module")
def watched(tmp_path_factory, demo_rows):
    probes, pairs = demo_rows
    s = Setup(tmp_path_factory.mktemp("watched"), probes)
    s.pairs = pairs
    _write_jsonl(s.inbox / "a.jsonl", pairs[0:2])
    _write_jsonl(s.inbox / "b.jsonl", pairs[2:4])
    report = s.ingest()
    assert not report.failed and len(report.batches) == 2
    return s


def _snapshot(s: Setup, batches: list[str]) -> dict:
    return {(t, b): s.batch_rows(t, b) for t in PAIR_TABLES for b in batches}


def test_sensor_requests_one_run_for_a_new_file_and_leaves_other_batches_untouched(watched):
    s = watched
    before_batches = sorted(s.instance.get_dynamic_partitions("sft_batches"))
    before = _snapshot(s, before_batches)
    n_before = query(s.warehouse, "SELECT count(*) AS n FROM smda.v_sft_pairs")["n"][0].as_py()
    assert s.sensor().run_requests == []  # nothing new yet

    _write_jsonl(s.inbox / "c.jsonl", s.pairs[4:6])
    result = s.sensor()
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    new = request.partition_key
    assert new.startswith("c-") and new not in before_batches
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [[new]]
    assert {k.to_user_string() for k in request.asset_selection} >= {"sft_pairs", "pair_shifts", "pair_summary", "loaded_batches"}

    s.instance.add_dynamic_partitions("sft_batches", [new])
    assert s.run_request(request).success
    pairs = query(s.warehouse, "SELECT pair_id, batch_id FROM smda.v_sft_pairs")
    assert pairs.num_rows == n_before + 2
    assert sorted(p for p, b in zip(pairs["pair_id"].to_pylist(), pairs["batch_id"].to_pylist()) if b == new) == \
        sorted(r["pair_id"] for r in s.pairs[4:6])
    summary = query(s.warehouse, "SELECT pair_id FROM smda.v_pair_summary WHERE batch_id = ?", [new])
    assert summary.num_rows == 2
    after = _snapshot(s, before_batches)
    for key, table in before.items():
        assert table.num_rows > 0 and after[key].equals(table), key  # byte-for-byte the same rows


def test_same_content_twice_adds_nothing_and_a_changed_file_supersedes_its_batch(watched):
    s = watched
    shutil.copy(s.inbox / "a.jsonl", s.inbox / "a_copy.jsonl")
    assert s.sensor().run_requests == []  # the same content under another name
    old = next(b for b in s.instance.get_dynamic_partitions("sft_batches") if b.startswith("b-"))

    changed = [dict(r) for r in s.pairs[2:4]]
    changed[1]["response"] = changed[1]["response"] + " (revised)"
    _write_jsonl(s.inbox / "b.jsonl", changed)
    result = s.sensor()
    assert len(result.run_requests) == 1
    new = result.run_requests[0].partition_key
    assert new.startswith("b-") and new != old
    s.instance.add_dynamic_partitions("sft_batches", [new])
    assert s.run_request(result.run_requests[0]).success

    batches = {r["batch_id"]: r for r in query(s.warehouse, "SELECT * FROM smda.v_sft_batches").to_pylist()}
    assert batches[old]["status"] == "superseded" and batches[old]["superseded_by"] == new
    assert batches[new]["status"] == "active"
    views = query(s.warehouse, "SELECT DISTINCT batch_id FROM smda.v_pair_summary")["batch_id"].to_pylist()
    assert new in views and old not in views
    kept = query(s.warehouse, "SELECT count(*) AS n FROM smda.pair_summary WHERE batch_id = ?", [old])["n"][0].as_py()
    assert kept == 2  # superseded rows stay on record, out of the views
    responses = query(s.warehouse, "SELECT response FROM smda.v_sft_pairs WHERE batch_id = ?", [new])["response"].to_pylist()
    assert any(r.endswith("(revised)") for r in responses)

    # The next tick retires the superseded partition: no eager condition recomputes it any more.
    tick = s.sensor()
    assert tick.run_requests == []
    deletes = [r for r in tick.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
    assert [list(r.partition_keys) for r in deletes] == [[old]]
    report = s.ingest()  # does the same without a daemon
    assert report.retired == [old] and report.ran == [] and not report.failed
    assert old not in s.instance.get_dynamic_partitions("sft_batches")
    assert s.sensor().dynamic_partitions_requests == []
    assert query(s.warehouse, "SELECT status FROM smda.v_sft_batches WHERE batch_id = ?", [old])["status"][0].as_py() == "superseded"


def test_a_malformed_file_fails_its_own_partition_naming_file_and_line(watched):
    s = watched
    views_before = {v: query(s.warehouse, f"SELECT * FROM smda.{v} ORDER BY ALL")
                    for v in ("v_sft_pairs", "v_pair_summary", "v_sft_batches")}
    bad = s.inbox / "broken.jsonl"
    bad.write_text(json.dumps(s.pairs[6]) + "\n" + '{"prompt": "unterminated\n')
    result = s.sensor()
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    s.instance.add_dynamic_partitions("sft_batches", [request.partition_key])
    run = s.run_request(request)
    assert not run.success
    error = next(e for e in run.all_events if e.is_step_failure).step_failure_data.error
    messages = []
    while error is not None:  # Dagster's wrapper, then the InputError it caught
        messages.append(error.message)
        error = error.cause
    assert any("broken.jsonl" in m and "line 2" in m for m in messages), messages
    for view, table in views_before.items():
        assert query(s.warehouse, f"SELECT * FROM smda.{view} ORDER BY ALL").equals(table), view

    report = s.ingest()  # the one-shot path reports the same error and loads nothing of it
    assert list(report.failed) == [request.partition_key]
    assert "broken.jsonl" in report.failed[request.partition_key]
    bad.unlink()


def _perturb_sae(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = path / "sae_weights.safetensors"
    tensors = load_file(weights)
    tensors["b_dec"] = tensors["b_dec"] + 0.05
    save_file(tensors, weights)


def test_changing_probes_or_sae_marks_policy_and_every_batch_stale_and_ingest_refits_once(tmp_path, demo_rows, demo_sources):
    from smda_assets.definitions import defs
    from smda_assets.run import observe_inputs
    from smda_assets.staleness import stale_report

    probes, pairs = demo_rows
    sae = tmp_path / "sae"
    shutil.copytree(demo_sources.sae["path"], sae)
    s = Setup(tmp_path / "w", probes[:70], sae_path=str(sae))
    _write_jsonl(s.inbox / "a.jsonl", pairs[0:2])
    _write_jsonl(s.inbox / "b.jsonl", pairs[2:4])
    assert not s.ingest().failed
    batches = sorted(s.instance.get_dynamic_partitions("sft_batches"))
    fresh = stale_report(defs, s.instance, smda=s.resource)
    assert fresh.keys("stale") == [] and fresh.keys("missing") == [("curation_experiment", None)]

    tick = dg.evaluate_automation_conditions(defs=defs, instance=s.instance)  # the daemon's view: all up to date
    assert tick.get_num_requested(dg.AssetKey("probes")) == 0 and tick.get_num_requested(dg.AssetKey("policy")) == 0

    _write_jsonl(s.probes, probes[:70] + probes[70:75])  # five more probes
    observe_inputs(s.resource, s.instance)
    tick = dg.evaluate_automation_conditions(defs=defs, instance=s.instance, cursor=tick.cursor)
    assert tick.get_num_requested(dg.AssetKey("probes")) == 1  # eager: the daemon would re-read the probes now
    assert tick.get_num_requested(dg.AssetKey("pair_shifts")) == 0  # and the batches only after the refit
    report = stale_report(defs, s.instance, smda=s.resource)
    assert report.of("probes") == "stale"
    assert any("probe_file" in c for c in report.causes[("probes", None)])  # Dagster's own root cause
    assert report.of("policy") == "stale"
    assert all(report.of("pair_attribution", b) == "stale" and report.of("pair_shifts", b) == "stale" for b in batches)
    _write_jsonl(s.probes, probes[:70])  # back as it was: nothing is stale any more
    observe_inputs(s.resource, s.instance)
    assert stale_report(defs, s.instance, smda=s.resource).keys("stale") == []

    _perturb_sae(sae)
    observe_inputs(s.resource, s.instance)
    report = stale_report(defs, s.instance, smda=s.resource)
    assert report.of("features") == "stale" and report.of("policy") == "stale"
    assert all(report.of("pair_attribution", b) == "stale" for b in batches)

    policy_runs = len(s.instance.fetch_materializations(dg.AssetKey("policy"), limit=100).records)
    result = s.ingest()
    assert result.probe_side and sorted(result.ran) == batches and not result.failed
    assert len(s.instance.fetch_materializations(dg.AssetKey("policy"), limit=100).records) == policy_runs + 1
    assert stale_report(defs, s.instance, smda=s.resource).keys("stale") == []


def test_four_batches_in_parallel_runs_equal_a_sequential_run(tmp_path, demo_rows, monkeypatch):
    from smda_assets.run import _run, observe_inputs, run_batches

    probes, pairs = demo_rows
    runs = {}
    for mode in ("sequential", "parallel"):
        s = Setup(tmp_path / mode, probes[:60])
        for i in range(4):
            _write_jsonl(s.inbox / f"part{i}.jsonl", pairs[10 + 2 * i: 12 + 2 * i])
        monkeypatch.setenv("DAGSTER_HOME", str(s.home))
        observe_inputs(s.resource, s.instance)
        from smda_core.inputs.batches import config_scan

        batches = sorted(config_scan(s.resource.config()).batches)
        s.instance.add_dynamic_partitions("sft_batches", batches)
        _run(s.resource, s.instance, ["probes", "features", "behaviour_scores", "policy", "policy_fit", "feature_labels"])
        failed = run_batches(batches, s.resource, s.instance, workers=4 if mode == "parallel" else 1)
        assert failed == {}
        _run(s.resource, s.instance, ["loaded_batches", "views"])
        runs[mode] = (s, batches)

    par, batches = runs["parallel"]
    seq, _ = runs["sequential"]
    job_runs = par.instance.get_runs(filters=dg.RunsFilter(job_name="sft_batch"))
    assert len(job_runs) == 4 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in job_runs)
    for table in PAIR_TABLES:
        a = query(seq.warehouse, f"SELECT * FROM smda.{table} ORDER BY ALL")
        b = query(par.warehouse, f"SELECT * FROM smda.{table} ORDER BY ALL")
        assert a.num_rows == b.num_rows > 0 and a.column_names == b.column_names, table
        assert sorted(set(b["batch_id"].to_pylist())) == batches
        for name in a.column_names:
            x, y = a[name].to_pylist(), b[name].to_pylist()
            if name in ("seconds", "source_file"):  # timings, and each run's own folder
                continue
            if a[name].type == pa.float64():
                np.testing.assert_allclose(np.array(x, float), np.array(y, float), rtol=1e-9, atol=1e-12, err_msg=f"{table}.{name}")
            else:
                assert x == y, f"{table}.{name}"


def test_metadata_add_joins_a_users_table_by_pair_id_or_content_hash(watched, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from smda_assets.cli import app

    s = watched
    summary = query(s.warehouse, "SELECT pair_id, content_hash, dy_harmful FROM smda.v_pair_summary").to_pandas()
    annotators = [f"ann{i % 3}" for i in range(len(summary))]
    by_id = pd.DataFrame({"id": summary["pair_id"], "annotator": annotators, "quality": np.arange(len(summary)) / 10})
    by_id = pd.concat([by_id, pd.DataFrame({"id": ["not-a-pair"], "annotator": ["x"], "quality": [9.9]})])
    by_id.to_csv(tmp_path / "labels.csv", index=False)
    runner = CliRunner()
    out = runner.invoke(app, ["metadata", "add", str(tmp_path / "labels.csv"), "--key", "id",
                              "--config", str(s.config), "--warehouse", str(s.warehouse)])
    assert out.exit_code == 0, out.output
    joined = query(s.warehouse, "SELECT pair_id, annotator, quality FROM smda.v_pair_summary_labels").to_pandas()
    expected = summary.merge(by_id, left_on="pair_id", right_on="id", how="left")  # the same join, by pandas
    got = joined.sort_values("pair_id").reset_index(drop=True)
    want = expected.sort_values("pair_id").reset_index(drop=True)
    assert list(got["annotator"]) == list(want["annotator"])
    np.testing.assert_allclose(got["quality"], want["quality"])
    info = query(s.warehouse, "SELECT * FROM smda.v_dataset_metadata WHERE name = 'labels'").to_pylist()[0]
    assert info["on_column"] == "pair_id" and info["matched"] == len(summary) and info["n_rows"] == len(summary) + 1

    by_hash = pd.DataFrame({"hash": summary["content_hash"], "license": ["cc-by"] * len(summary)})
    by_hash.to_parquet(tmp_path / "licenses.parquet")
    out = runner.invoke(app, ["metadata", "add", str(tmp_path / "licenses.parquet"), "--key", "hash",
                              "--config", str(s.config), "--warehouse", str(s.warehouse)])
    assert out.exit_code == 0, out.output
    joined = query(s.warehouse, "SELECT license FROM smda.v_pair_summary_licenses")["license"].to_pylist()
    assert joined == ["cc-by"] * len(summary)
    assert query(s.warehouse, "SELECT on_column FROM smda.v_dataset_metadata WHERE name = 'licenses'")["on_column"][0].as_py() == "content_hash"

    pd.DataFrame({"id": ["x", "x"], "v": [1, 2]}).to_csv(tmp_path / "dupes.csv", index=False)
    out = runner.invoke(app, ["metadata", "add", str(tmp_path / "dupes.csv"), "--key", "id",
                              "--config", str(s.config), "--warehouse", str(s.warehouse)])
    assert out.exit_code == 1 and "dupes.csv" in out.output and "line 3" in out.output


def test_the_sensor_and_schedule_take_interval_cron_and_states_from_the_watch_settings(tmp_path, monkeypatch):
    from smda_assets.automation import build_automation
    from smda_assets.definitions import build_defs
    from smda_core.config import WatchSection

    def wiring(sensor: dg.SensorDefinition, schedule: dg.ScheduleDefinition) -> tuple:
        return (sensor.minimum_interval_seconds, sensor.default_status, schedule.cron_schedule, schedule.default_status)

    defaults = WatchSection()
    one = WatchSection(sensor_interval_s=7, sensor_running=not defaults.sensor_running, cron="15 4 * * 1",
                       schedule_running=not defaults.schedule_running)
    two = WatchSection(sensor_interval_s=90, sensor_running=defaults.sensor_running, cron="*/20 * * * *",
                       schedule_running=defaults.schedule_running)
    a, b = build_automation(one), build_automation(two)
    running = {True: (dg.DefaultSensorStatus.RUNNING, dg.DefaultScheduleStatus.RUNNING),
               False: (dg.DefaultSensorStatus.STOPPED, dg.DefaultScheduleStatus.STOPPED)}
    for watch, automation in ((one, a), (two, b)):
        assert wiring(*automation) == (watch.sensor_interval_s, running[watch.sensor_running][0], watch.cron,
                                       running[watch.schedule_running][1])
        assert automation.sensor.name == "sft_folder_sensor" and automation.schedule.job_name == "refresh"
    assert all(x != y for x, y in zip(wiring(*a), wiring(*b)))  # each value follows its config
    assert a.sensor.minimum_interval_seconds != defaults.sensor_interval_s and a.schedule.cron_schedule != defaults.cron

    # The code location: built from the config $SMDA_CONFIG names (what `dg dev` loads), or from a path.
    config = tmp_path / "smda.yaml"
    config.write_text("watch:\n  sensor_interval_s: 7\n  sensor_running: false\n  cron: '15 4 * * 1'\n"
                      "  schedule_running: true\n")
    monkeypatch.setenv("SMDA_CONFIG", str(config))
    for defs in (build_defs(), build_defs(str(config))):
        assert wiring(defs.resolve_sensor_def("sft_folder_sensor"), defs.resolve_schedule_def("smda_refresh")) == wiring(*a)
    refresh = {k.to_user_string() for k in defs.resolve_job_def("refresh").asset_layer.selected_asset_keys}
    assert {"probe_file", "sae_files", "policy", "loaded_batches", "views"} <= refresh
    monkeypatch.delenv("SMDA_CONFIG")
    default = build_defs()
    assert wiring(default.resolve_sensor_def("sft_folder_sensor"), default.resolve_schedule_def("smda_refresh")) == \
        wiring(*build_automation(defaults))


def test_find_batch_reads_only_the_file_named_like_the_batch(tmp_path, demo_rows, monkeypatch):
    from smda_core.inputs import batches
    from smda_core.config import load_config

    _, pairs = demo_rows
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(5):
        _write_jsonl(inbox / f"batch {i}.jsonl", pairs[2 * i: 2 * i + 2])
    cfg_path = tmp_path / "smda.yaml"
    cfg_path.write_text(f"data:\n  sft: []\nwatch:\n  folder: {inbox}\ndemo:\n  cache_dir: {CACHE}\n")
    cfg = load_config(cfg_path)
    full = batches.config_scan(cfg).batches
    wanted = next(b for b in full if b.startswith("batch_3-"))
    read: list[Path] = []
    real_hash = batches.file_hash
    monkeypatch.setattr(batches, "file_hash", lambda p: read.append(Path(p)) or real_hash(p))
    assert batches.find_batch(cfg, wanted) == full[wanted]
    assert read == [inbox.resolve() / "batch 3.jsonl"]  # its neighbours were not hashed
    _write_jsonl(inbox / "batch 3.jsonl", pairs[:1])  # changed: the old batch is held by no file now
    assert batches.find_batch(cfg, wanted) is None
