"""Users' dataset tables in the warehouse, joined to the pair views by pair_id or by content hash.

A metadata table (CSV, Parquet or JSONL, keyed by a unique column) is stored as
``smda.meta_<name>`` and gets a view ``smda.v_pair_summary_<name>``: every column of
``v_pair_summary`` plus the table's columns, matched on ``pair_id`` or on the pair's
``content_hash`` (which survives re-numbered or re-batched pairs). Loading the same name again
replaces it. ``smda.v_dataset_metadata`` lists what is loaded and how much of it matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from smda_core import inputs
from smda_core.errors import InputError, SMDAError
from smda_core.store.warehouse import _ident, replace_partition

JOIN_COLUMNS = ("pair_id", "content_hash")


@dataclass(frozen=True)
class MetadataLoad:
    name: str
    table: str
    view: str
    key: str
    on: str
    n_rows: int
    matched: int


def table_name(path: str | Path, name: str | None = None) -> str:
    """A safe identifier from the given name or the file's stem."""
    raw = name or Path(path).stem
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", raw).strip("_").lower()
    if not safe:
        raise SMDAError(f"{path}: cannot make a table name from {raw!r}; pass a name")
    return safe if safe[0].isalpha() else f"t_{safe}"


def _matches(con: duckdb.DuckDBPyConnection, keys: pa.Table, column: str) -> int:
    con.register("_smda_keys", keys)
    try:
        return con.execute(f"SELECT count(DISTINCT k) FROM _smda_keys JOIN smda.v_pair_summary AS s ON s.{column} = k").fetchall()[0][0]
    finally:
        con.unregister("_smda_keys")


def load_metadata(con: duckdb.DuckDBPyConnection, path: str | Path, key: str, *, on: str = "auto",
                  name: str | None = None) -> MetadataLoad:
    """Store a user's table and (re)create its join view; ``on='auto'`` picks the column the keys match most.

    Raises:
        InputError: the file is malformed, or its key column is missing, empty or not unique.
        SMDAError: ``on`` is not pair_id / content_hash / auto.
    """
    if on not in ("auto", *JOIN_COLUMNS):
        raise SMDAError(f"on={on!r}: use pair_id, content_hash or auto")
    table = inputs.read_metadata_table(path, key)
    name = table_name(path, name)
    keys = pa.table({"k": table[key]})
    counts = {c: _matches(con, keys, c) for c in JOIN_COLUMNS}
    if on == "auto":
        on = max(JOIN_COLUMNS, key=lambda c: counts[c])
    if counts[on] == 0 and table.num_rows:
        raise InputError(f"no value of the key column matches any pair's {on} in the warehouse "
                         f"(pair_id matches {counts['pair_id']}, content_hash matches {counts['content_hash']})",
                         path=str(path), field=key)
    meta_table, view = f"meta_{name}", f"v_pair_summary_{name}"
    summary_cols = {r[0].lower() for r in con.execute("DESCRIBE smda.v_pair_summary").fetchall()}
    extra = [c for c in table.column_names if c != key]
    select_extra = ", ".join(f"m.{_ident(c)} AS {_ident(('meta_' + c) if c.lower() in summary_cols else c)}" for c in extra)
    con.begin()
    try:
        con.register("_smda_meta", table)  # the user's layout as it is now: drop the old one, columns and all
        con.execute(f"DROP TABLE IF EXISTS smda.{_ident(meta_table)}")
        con.execute(f"CREATE TABLE smda.{_ident(meta_table)} AS SELECT * FROM _smda_meta")
        con.unregister("_smda_meta")
        con.execute(f"CREATE OR REPLACE VIEW smda.{_ident(view)} AS SELECT s.*{', ' + select_extra if extra else ''} "
                    f"FROM smda.v_pair_summary AS s LEFT JOIN smda.{_ident(meta_table)} AS m ON s.{on} = m.{_ident(key)}")
        row = {"name": name, "source_file": str(Path(path).resolve()), "key": key, "on_column": on,
               "n_rows": table.num_rows, "matched": counts[on], "view": f"smda.{view}",
               "loaded_at": datetime.now(timezone.utc).replace(tzinfo=None)}
        replace_partition(con, "dataset_metadata", "name", name, pa.Table.from_pylist([row]), transaction=False)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return MetadataLoad(name, f"smda.{meta_table}", f"smda.{view}", key, on, table.num_rows, counts[on])
