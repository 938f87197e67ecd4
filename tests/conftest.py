"""Shared fixtures: the demo world is built once per test session (cached by recipe hash)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _name in ("DAGSTER_HOME", "SMDA_CONFIG"):  # a developer's own instance or config never reaches the tests
    os.environ.pop(_name, None)
CACHE = os.environ.get("SMDA_TEST_CACHE", str(ROOT / ".cache" / "smda-demo"))


def demo_config(**demo):
    from smda_core.config import load_config

    return load_config(None, demo={"cache_dir": CACHE, **demo})


@pytest.fixture(scope="session")
def runtime():
    """The default-recipe demo world's model runtime (model, tokenizer, SAE, tokenised probes)."""
    from smda_core.api import load_runtime

    return load_runtime(demo_config(), progress=False)


@pytest.fixture(scope="session")
def probe_scores(runtime):
    from smda_core.api import measure_probes

    return measure_probes(runtime, progress=False)


@pytest.fixture(scope="session")
def policy(runtime, probe_scores):
    from smda_core.api import fit_policy

    return fit_policy(probe_scores, runtime.config.policy)


def smda(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 600):
    """The `smda` command as a user runs it: a fresh process on this checkout's code, stdout and stderr together.

    `env` replaces variables of this environment (None removes one); DAGSTER_HOME and SMDA_CONFIG are
    removed unless given, so a developer's own settings never leak into a test.
    """
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "SMDA_CONFIG")}
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    full["PYTHONPATH"] = str(ROOT)  # this checkout's code, wherever the command runs from
    full.setdefault("COLUMNS", "200")  # Rich wraps at 80 columns without a terminal
    return subprocess.run([sys.executable, "-m", "smda_assets.cli", *args], cwd=cwd or ROOT, env=full,
                          capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def smda_here(*args: str, cwd: str | Path | None = None, env: dict | None = None):
    """The `smda` command in this process (click's runner): the same commands and output as :func:`smda`, without
    a new interpreter's imports; `env` as there (None removes a variable). Returns `returncode` and `stdout`."""
    import contextlib
    import types

    from typer.testing import CliRunner

    from smda_assets.cli import app

    with contextlib.chdir(cwd or ROOT):
        result = CliRunner(env={k: (None if v is None else str(v)) for k, v in (env or {}).items()}).invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return types.SimpleNamespace(returncode=result.exit_code, stdout=result.output)


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory) -> Path:
    """The default demo world's whole warehouse (every asset, all 200 pairs), built once per session; tests only read
    it. SMDA_TEST_WAREHOUSE names an already built one (e.g. warehouse/warehouse.duckdb after `smda demo`) to copy."""
    import shutil

    tmp = tmp_path_factory.mktemp("demo-wh")
    given = os.environ.get("SMDA_TEST_WAREHOUSE")
    if given:
        shutil.copy(given, tmp / "warehouse.duckdb")
        return tmp / "warehouse.duckdb"
    import yaml

    from smda_assets.run import materialize_all

    cfg = tmp / "smda.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"cache_dir": CACHE}, "warehouse": str(tmp / "warehouse.duckdb")}))
    materialize_all(str(cfg))
    return tmp / "warehouse.duckdb"


@pytest.fixture(scope="session")
def demo_report(demo_warehouse, tmp_path_factory):
    """The HTML report of :func:`demo_warehouse`, written once: (write_report's result, the page's text)."""
    from smda_core.report.html import write_report

    written = write_report(demo_warehouse, tmp_path_factory.mktemp("report") / "report.html")
    return written, written.path.read_text(encoding="utf-8")
