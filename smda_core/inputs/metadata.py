"""Users' dataset tables (CSV, Parquet, JSONL) keyed by a unique column, to join with the pair views."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from smda_core.errors import InputError
from smda_core.inputs.records import _check_file, _extra_columns, _missing, _read_records


# --------------------------------------------------------------------------- metadata tables


def read_metadata_table(path: str | Path, key: str) -> pa.Table:
    """Read a user metadata table (CSV, Parquet or JSONL) keyed by a unique column.

    Args:
        path: The table file.
        key: The key column (e.g. ``pair_id``); it must exist, be non-missing and unique.
            It is returned as strings so it joins with the warehouse's string ids.

    Returns:
        The table with ``key`` first. Parquet columns keep their types; CSV columns are
        typed as described in the module docstring (the key stays a string).

    Raises:
        InputError: naming the file, line (row) and field of the first bad input.
    """
    path = Path(path)
    fmt = _check_file(path)
    if fmt == "parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read Parquet: {exc}", path=str(path)) from None
        if table.num_rows == 0:
            raise InputError("no rows (the file is empty)", path=str(path))
        if key not in table.column_names:
            raise InputError(
                f"key column not found; columns are {', '.join(table.column_names)}", path=str(path), field=key
            )
        keys = table.column(key).to_pylist()
        columns = {name: table.column(name) for name in table.column_names if name != key}
    else:
        records, _ = _read_records(path, keep_text=(key,))
        if not any(key in r.fields for r in records):
            raise InputError("key column not found", path=str(path), field=key)
        keys = [r.fields.get(key) for r in records]
        columns = _extra_columns(records, skip=(key,))
    lines = [r.line for r in records] if fmt != "parquet" else list(range(1, len(keys) + 1))
    first: dict[str, int] = {}
    text_keys = []
    for value, line in zip(keys, lines):
        if _missing(value) or (isinstance(value, str) and not value.strip()):
            raise InputError("key is missing", path=str(path), line=line, field=key)
        value = value.strip() if isinstance(value, str) else str(value)
        if value in first:
            raise InputError(
                f"duplicate key {value!r} (lines {first[value]} and {line})", path=str(path), line=line, field=key
            )
        first[value] = line
        text_keys.append(value)
    return pa.table({key: pa.array(text_keys, pa.string()), **columns})
