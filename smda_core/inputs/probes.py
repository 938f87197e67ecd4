"""Probe files (DESIGN §2): prompt, category, harmful, and optionally refused; every other field kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from smda_core.errors import InputError
from smda_core.inputs.records import _PROBE_COMPUTED, _PROBE_FIELDS, _boolean, _check_given_hash, _check_unique, _extra_columns, _identifier, _read_records, _text, content_hash


# --------------------------------------------------------------------------- probes


def read_probes(path: str | Path, *, max_chars: int = 20000) -> pa.Table:
    """Read a probe file (JSONL, CSV or Parquet).

    Required fields: ``prompt`` (non-empty), ``category`` (non-empty string), ``harmful``
    (boolean). Optional: ``probe_id`` (unique; default ``p{row:05d}`` with ``row`` the
    0-based row index) and ``refused`` (boolean or missing). Any other field is kept as its
    own column (nested values as JSON strings).

    Args:
        path: The probe file.
        max_chars: The longest prompt accepted, in characters.

    Returns:
        A table with columns ``probe_id`` (string), ``prompt`` (string, as given),
        ``category`` (string), ``harmful`` (bool), ``refused`` (nullable bool),
        ``content_hash`` (SHA-256 hex of the trimmed prompt), then the extra columns.

    Raises:
        InputError: naming the file, line and field of the first bad input.
    """
    path = Path(path)
    records, _ = _read_records(path, keep_text=("probe_id", "prompt", "category"))
    columns: dict[str, list[Any]] = {name: [] for name in (*_PROBE_FIELDS, *_PROBE_COMPUTED)}
    for row, record in enumerate(records):
        prompt = _text(record, "prompt", path)
        if len(prompt) > max_chars:
            raise InputError(
                f"prompt is {len(prompt)} characters, longer than max_chars={max_chars}",
                path=str(path),
                line=record.line,
                field="prompt",
            )
        digest = content_hash(prompt)
        _check_given_hash(record, digest, path)
        columns["probe_id"].append(_identifier(record, "probe_id", path) or f"p{row:05d}")
        columns["prompt"].append(prompt)
        columns["category"].append(_text(record, "category", path).strip())
        columns["harmful"].append(_boolean(record, "harmful", path, required=True))
        columns["refused"].append(_boolean(record, "refused", path, required=False))
        columns["content_hash"].append(digest)
    _check_unique(columns["probe_id"], records, "probe_id", path)
    table = {
        "probe_id": pa.array(columns["probe_id"], pa.string()),
        "prompt": pa.array(columns["prompt"], pa.string()),
        "category": pa.array(columns["category"], pa.string()),
        "harmful": pa.array(columns["harmful"], pa.bool_()),
        "refused": pa.array(columns["refused"], pa.bool_()),
        "content_hash": pa.array(columns["content_hash"], pa.string()),
    }
    table.update(_extra_columns(records, skip=table))
    return pa.table(table)
