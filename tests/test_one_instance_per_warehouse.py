"""One Dagster instance per warehouse: two warehouses built from one folder never see each other's runs,
and `smda ingest` recomputes what the instance recorded but the warehouse does not hold.

One small world (40 demo probes, a watched folder with one file of 1 pair), two configs in one
folder that differ only in their warehouse, each with its own DAGSTER_HOME holding a copy of the
project's dagster.yaml (what a user does to keep two projects apart). Everything goes through the
`smda` command (in this process), run from that folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import CACHE, ROOT, smda_here
from smda_core.store.query import query
from test_incremental import _write_jsonl, demo_rows, demo_sources  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


class TwoWarehouses:
    def __init__(self, root: Path, probes: list[dict], pairs: list[dict]):
        self.root = root
        inbox = root / "inbox"
        inbox.mkdir()
        _write_jsonl(root / "probes.jsonl", probes)
        _write_jsonl(inbox / "a.jsonl", pairs)
        self.config, self.warehouse, self.home = {}, {}, {}
        for name in ("a", "b"):
            self.warehouse[name] = root / f"wh_{name}" / "warehouse.duckdb"
            self.config[name] = root / f"{name}.yaml"
            self.config[name].write_text(f"data:\n  probes: probes.jsonl\n  sft: []\nwatch:\n  folder: inbox\n"
                                         f"demo:\n  cache_dir: {CACHE}\nwarehouse: wh_{name}/warehouse.duckdb\n")
            self.home[name] = root / f"home_{name}"
            self.home[name].mkdir()
            shutil.copy(ROOT / "dagster.yaml", self.home[name] / "dagster.yaml")

    def smda(self, *args: str, home: str | None):
        return smda_here(*args, cwd=self.root, env={"DAGSTER_HOME": self.home[home] if home else None})

    def rows(self, name: str, view: str) -> int:
        return query(self.warehouse[name], f"SELECT count(*) AS n FROM smda.{view}")["n"][0].as_py()


@pytest.fixture(scope="module")
def two(tmp_path_factory, demo_rows):  # noqa: F811
    probes, pairs = demo_rows
    t = TwoWarehouses(tmp_path_factory.mktemp("two"), probes[:40], pairs[:1])
    out = t.smda("ingest", "--config", "a.yaml", home="a")
    assert out.returncode == 0, out.stdout
    assert "computed: a-" in out.stdout, out.stdout
    return t


def test_two_warehouses_built_from_one_folder_never_see_each_others_runs(two):
    """Reproduces: a second config with its own warehouse and DAGSTER_HOME, run from the same folder, printed
    `computed: none` and left every view empty (exit 0): the copied dagster.yaml put both instances' storage
    in one folder relative to the working directory."""
    t = two
    out = t.smda("ingest", "--config", "b.yaml", home="b")
    assert out.returncode == 0, out.stdout
    assert "probe side refitted: True" in out.stdout and "computed: a-" in out.stdout, out.stdout
    for name in ("a", "b"):
        assert t.rows(name, "v_policy") > 0 and t.rows(name, "v_pair_summary") == 1, name
    assert not (t.root / ".dagster_home").exists()  # nothing stored relative to the working directory

    # One instance serves one warehouse: b's config on a's instance is refused, naming both, before any run.
    out = t.smda("ingest", "--config", "b.yaml", home="a")
    assert out.returncode == 1, out.stdout
    line = next(l for l in out.stdout.splitlines() if l.startswith("error:"))
    assert "wh_a" in line and "wh_b" in line and "DAGSTER_HOME" in line, line
    assert "Loading weights" not in out.stdout


def test_ingest_recomputes_what_the_instance_recorded_but_the_warehouse_lacks(two):
    """Reproduces: the instance's memory was taken for the warehouse's content; with the warehouse removed
    (the file and its folder of staged batches), `smda stale` said everything was fresh and `smda ingest`
    computed nothing, leaving every view empty."""
    t = two
    shutil.rmtree(t.warehouse["a"].parent)
    out = t.smda("stale", "--config", "a.yaml", home="a")
    assert out.returncode == 0, out.stdout
    assert "everything is fresh" not in out.stdout
    assert "policy" in out.stdout and "pair_summary" in out.stdout and "not in the warehouse" in out.stdout, out.stdout

    out = t.smda("ingest", "--config", "a.yaml", home="a")
    assert out.returncode == 0, out.stdout
    assert "probe side refitted: True" in out.stdout and "computed: a-" in out.stdout, out.stdout
    assert t.rows("a", "v_policy") > 0 and t.rows("a", "v_pair_summary") == 1
    out = t.smda("stale", "--config", "a.yaml", home="a")
    assert "everything is fresh" in out.stdout or "curation_experiment" in out.stdout, out.stdout
    assert "not in the warehouse" not in out.stdout
