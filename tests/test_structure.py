"""The package's structure and safety, read from its source and checked by importing: no import circle,
numpy steps free of torch, nothing that unpickles or reaches into Dagster's private modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("smda_core", "smda_assets")
#: The numpy steps (DESIGN §8): they take arrays and settings, never a model, so they never import torch.
NUMPY_STEPS = ("smda_core.policy", "smda_core.attribution", "smda_core.model.measurements", "smda_core.store.arrays",
               "smda_core.sources", "smda_core.config", "smda_core.inputs", "smda_core.store.tables", "smda_core.store.staging")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every module name an import statement of the file names (at any depth, lazy imports included)."""
    tree = ast.parse(path.read_text(), str(path))
    base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (prefix, node.module or "") if p)
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for m, path in mods.items():
        edges = set()
        for name in _imports(path, m):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != m and not (name.startswith(m + ".") or m.startswith(name + ".")):
                edges.add(name)
        graph[m] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_circle_in_the_package():
    assert _cycles(_graph()) == []


def test_no_pickle_no_unsafe_loads_no_private_dagster():
    bad = []
    for m, path in _modules().items():
        tree = ast.parse(path.read_text(), str(path))
        for name in _imports(path, m):
            if name.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib") or name.startswith("dagster._"):
                bad.append(f"{m} imports {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if (kw.arg, getattr(kw.value, "value", None)) in (("allow_pickle", True), ("weights_only", False),
                                                                        ("trust_remote_code", True)):
                        bad.append(f"{m}:{node.lineno} {kw.arg}={kw.value.value}")
    assert bad == []


@pytest.mark.parametrize("module", NUMPY_STEPS)
def test_numpy_steps_import_no_torch(module):
    """Importing a numpy step (and everything it imports) leaves torch unloaded: checked in a fresh interpreter."""
    mods = [m for m in _modules() if m == module or m.startswith(module + ".")]
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'sae_lens')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} pulls in {out.stdout.strip()[:200]}"
