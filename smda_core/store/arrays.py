"""Numeric state between steps as NPZ files without pickle, each with a schema name and version.

Anyone who can write the warehouse folder must not be able to run code in the next step, so
nothing here unpickles: arrays are read with `allow_pickle=False` (object arrays are refused),
metadata travels as JSON text, and a file of another schema or version is an error, not a guess.
Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from smda_core.errors import SMDAError

SCHEMA_KEY = "__schema__"


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], *, schema: str, version: int, meta: dict | None = None) -> Path:
    """Write `arrays` (no object dtypes) and JSON `meta` to `path` (.npz), atomically."""
    path = Path(path)
    for name, a in arrays.items():
        if np.asarray(a).dtype.hasobject:
            raise SMDAError(f"{path}: array '{name}' has Python objects; store numbers or strings only")
    header = json.dumps({"schema": schema, "version": version, "meta": meta or {}}, sort_keys=True, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{SCHEMA_KEY: np.asarray(header)}, **{k: np.asarray(v) for k, v in arrays.items()})
    tmp.replace(path)
    return path


def load_arrays(path: str | Path, *, schema: str, version: int) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by `save_arrays`; raise unless its schema and version match."""
    path = Path(path)
    if not path.exists():
        raise SMDAError(f"{path} is missing: materialise the upstream step first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz[SCHEMA_KEY]))
            arrays = {k: npz[k] for k in npz.files if k != SCHEMA_KEY}
    except (ValueError, KeyError, OSError) as exc:
        raise SMDAError(f"{path}: not an array file of this product ({exc}); recompute it") from None
    if header.get("schema") != schema or header.get("version") != version:
        raise SMDAError(f"{path}: holds {header.get('schema')} v{header.get('version')}, expected {schema} v{version}; "
                        "recompute it")
    return arrays, header.get("meta", {})
