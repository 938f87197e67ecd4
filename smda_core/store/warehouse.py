"""The DuckDB warehouse: table layouts, atomic writes and the public views.

This module owns DuckDB. One file (default ``warehouse/warehouse.duckdb``) holds schema
``smda``; tables hold what the pipeline materialises and the views in ``sql/*.sql`` are the
public interface (DESIGN §6). Every write goes through :func:`replace_table` or
:func:`replace_partition`, each one transaction that rolls back and re-raises on error, so a
re-run replaces rows instead of duplicating them. Values always travel as bound parameters
(``?``) or as registered Arrow tables; only identifiers (quoted) are spliced into SQL.

DuckDB allows one writing process, and a reader cannot open the file while another process
writes it: it fails at once ("Could not set lock on file"). :func:`session` waits instead: it
holds an advisory lock beside the file (exclusive to write, shared to read) for as long as its
connection is open, so parallel Dagster steps and queries take turns rather than fail. The
user-facing read side (``query``, ``ibis_connection``, ``row_counts``) lives in
:mod:`smda_core.store.query`, which opens the file read-only and locked down.
"""

from __future__ import annotations

import fcntl
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from smda_core.errors import SMDAError

SCHEMA = "smda"
DEFAULT_PATH = Path("warehouse/warehouse.duckdb")
SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

_S, _F, _I32, _I64, _B = pa.string(), pa.float64(), pa.int32(), pa.int64(), pa.bool_()


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in fields])


TABLES: dict[str, pa.Schema] = {
    "probes": _schema(("probe_id", _S), ("prompt", _S), ("category", _S), ("harmful", _B), ("refused", _B),
                      ("content_hash", _S), ("probe_index", _I32)),
    "readout_info": _schema(("model", _S), ("sae", _S), ("hook", _S), ("position", _S), ("behaviour", _S), ("dtype", _S),
                            ("n_probes", _I32), ("readout_version", _S)),
    "behaviour_scores": _schema(("probe_id", _S), ("behaviour", _F), ("refusal_prob", _F), ("refused", _B),
                                ("refused_source", _S)),
    "probe_scores": _schema(("probe_id", _S), ("behaviour", _F), ("refusal_prob", _F), ("refused", _B),
                            ("refused_source", _S), ("predicted", _F), ("heldout", _B)),
    "features": _schema(("probe_id", _S), ("feature_id", _I32), ("activation", _F)),
    "probe_contributions": _schema(("probe_id", _S), ("feature_id", _I32), ("contribution", _F)),
    "feature_labels": _schema(("feature_id", _I32), ("label", _S), ("source", _S), ("top_probes", _S)),
    "policy_features": _schema(("feature_id", _I32), ("rank", _I32), ("coef", _F), ("mean", _F), ("std", _F),
                               ("direction", _S), ("statistic", _F), ("statistic_name", _S)),
    "policy_fit": _schema(("lambda", _F), ("r2", _F), ("loo_r2", _F), ("accuracy", _F), ("majority_baseline", _F),
                          ("intercept", _F), ("threshold", _F), ("n_probes", _I32), ("k", _I32), ("preset", _S),
                          ("model", _S), ("sae", _S), ("hook", _S), ("position", _S), ("behaviour", _S),
                          ("design", _S), ("dtype", _S), ("formula", _S), ("fitted_at", pa.timestamp("us")),
                          ("policy_version", _S), ("warnings", _S), ("score_name", _S)),
    "sft_pairs": _schema(("pair_id", _S), ("batch_id", _S), ("prompt", _S), ("response", _S), ("content_hash", _S),
                         ("source_file", _S), ("line", _I64), ("metadata_json", _S)),
    "pair_attribution": _schema(("pair_id", _S), ("batch_id", _S), ("feature_id", _I32), ("method", _S),
                                ("delta_beta", _F), ("via_x", _F), ("via_y", _F), ("via_xy", _F),
                                ("contribution", _F), ("policy_version", _S)),
    "pair_summary": _schema(("pair_id", _S), ("batch_id", _S), ("alignment", _F), ("alignment_refit", _F),
                            ("alignment_linear", _F), ("correctness_shift", _F), ("dy_harmful", _F),
                            ("dy_harmless", _F), ("active_flips", _I64), ("dominant_feature", _I32),
                            ("dominant_share", _F), ("intended_features", _S), ("interference_legacy", _F),
                            ("flagged_legacy", _B), ("seconds", _F), ("method", _S), ("margin_shift", _F),
                            ("local_shift", _F), ("worst_group_shift", _F), ("worst_group", _S),
                            ("screen_consistency", _F), ("score", _F), ("interference", _F), ("interference_z", _F),
                            ("flagged", _B), ("harm_feature", _I32), ("effect_fit_r2", _F), ("response_refuses", _B),
                            ("policy_version", _S), ("specific_shift", _F), ("specific_group", _S),
                            ("policy_projection", _F), ("sample", _B), ("harm_shift", _F), ("keep_score", _F)),
    "feature_maxima": _schema(("probe_id", _S), ("feature_id", _I32), ("activation", _F), ("token_index", _I64)),
    "feature_examples": _schema(("feature_id", _I32), ("rank", _I32), ("probe_id", _S), ("activation", _F), ("token", _S),
                                ("marked_text", _S)),
    "pair_mechanism": _schema(("pair_id", _S), ("batch_id", _S), ("score", _S), ("feature_id", _I32),
                              ("activation_part", _F), ("weight_part", _F), ("share", _F), ("rank", _I32), ("source", _S),
                              ("policy_version", _S)),
    "pair_group_effects": _schema(("pair_id", _S), ("batch_id", _S), ("group", _S), ("feature_id", _I32),
                                  ("activation_part", _F), ("weight_part", _F), ("dy", _F), ("policy_version", _S)),
    "pair_group_shift": _schema(("pair_id", _S), ("batch_id", _S), ("group", _S), ("n_probes", _I64), ("dy", _F),
                                ("dp", _F), ("policy_version", _S)),
    "pair_shifts": _schema(("pair_id", _S), ("batch_id", _S), ("probe_id", _S), ("feature_id", _I32), ("dz", _F),
                           ("dy", _F), ("policy_version", _S)),
    "sft_batches": _schema(("batch_id", _S), ("source_file", _S), ("content_hash", _S), ("n_pairs", _I64),
                           ("stage_id", _S), ("staged_at", pa.timestamp("us")), ("loaded_at", pa.timestamp("us")),
                           ("status", _S), ("superseded_by", _S), ("policy_version", _S)),
    "dataset_metadata": _schema(("name", _S), ("source_file", _S), ("key", _S), ("on_column", _S), ("n_rows", _I64),
                                ("matched", _I64), ("view", _S), ("loaded_at", pa.timestamp("us"))),
    "curation": _schema(("experiment_id", _S), ("rule", _S), ("variant", _S), ("n_pairs", _I64), ("correctness", _F),
                        ("precision", _F), ("recall", _F), ("f1", _F), ("refusal_accuracy", _F), ("dropped", _S),
                        ("seed", _I64), ("per_category", _S), ("created_at", pa.timestamp("us"))),
    "method_agreement": _schema(("batch_id", _S), ("score", _S), ("feature_id", _I32), ("method", _S), ("reference", _S),
                                ("n_pairs", _I64), ("spearman", _F), ("median_rel_err", _F), ("policy_version", _S)),
    "validation": _schema(("check", _S), ("method", _S), ("score", _S), ("n", _I64), ("spearman", _F), ("detail", _S),
                          ("run_id", _S), ("created_at", pa.timestamp("us"))),
}
"""Table name → Arrow schema of the ``smda`` tables. Partitioned tables carry ``batch_id``.

Every pair table carries ``policy_version``: the data version of the policy its rows were computed
against (``policy_fit.policy_version`` holds the current one); the pair views show only rows of the
current policy, so a refit never shows pair rows of features the policy no longer has."""

_DUCK_TYPES = {_S: "VARCHAR", _F: "DOUBLE", _I32: "INTEGER", _I64: "BIGINT", _B: "BOOLEAN",
               pa.timestamp("us"): "TIMESTAMP"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INCOMING = "_smda_incoming"


def _ident(name: str) -> str:
    """Quote an identifier for DuckDB (``group`` and ``lambda`` are keywords; metadata names are user data)."""
    return '"' + str(name).replace('"', '""') + '"'


def _table_ref(name: str) -> str:
    if not _NAME.match(name):
        raise SMDAError(f"invalid warehouse table name {name!r}: use letters, digits and underscores")
    return f"{SCHEMA}.{_ident(name)}"


def ddl(name: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` statement of one table of :data:`TABLES`."""
    cols = ", ".join(f"{_ident(f.name)} {_DUCK_TYPES[f.type]}" for f in TABLES[name])
    return f"CREATE TABLE IF NOT EXISTS {_table_ref(name)} ({cols})"


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create schema ``smda`` and every table of :data:`TABLES` unless they exist (views bind before any data),
    and add the columns a newer version of :data:`TABLES` has to tables an older one created (NULL in old rows)."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    have: dict[str, set[str]] = {}
    for table, column in con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = ?",
                                     [SCHEMA]).fetchall():
        have.setdefault(table, set()).add(column.lower())
    for name, schema in TABLES.items():
        if name not in have:
            con.execute(ddl(name))
            continue
        for f in schema:
            if f.name.lower() not in have[name]:
                con.execute(f"ALTER TABLE {_table_ref(name)} ADD COLUMN {_ident(f.name)} {_DUCK_TYPES[f.type]}")


def connect(path: str | Path = DEFAULT_PATH, read_only: bool = False,
            config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file.

    Args:
        path: the DuckDB file; its parent folder is created when writing.
        read_only: open for queries only (many readers may share the file; one writer may not).
        config: DuckDB settings applied when the file opens (the locked-down query connection of
            :mod:`smda_core.store.query`). DuckDB shares one database per file within a process, so
            every connection a process holds open on a file needs the same ``read_only`` and ``config``.

    Returns:
        A DuckDB connection; writing connections already hold schema ``smda`` and its tables.

    Raises:
        SMDAError: the file is missing (read-only), named ``smda.duckdb``, or locked by another writer.
    """
    path = Path(path)
    if path.stem == SCHEMA:
        raise SMDAError(f"warehouse file {path} is named after schema '{SCHEMA}': DuckDB would make "
                        f"'{SCHEMA}.v_policy' ambiguous; use e.g. warehouse/warehouse.duckdb")
    if read_only and not path.exists():
        raise SMDAError(f"no warehouse at {path}: materialise the pipeline first")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only, config=config or {})
    except duckdb.Error as e:
        why = ("this process already holds a connection to it opened differently (a write session, or a "
               "query connection); close that one first" if "different configuration" in str(e) else
               "DuckDB allows one writing process; is another step or session writing to it?")
        raise SMDAError(f"cannot open warehouse {path}{' read-only' if read_only else ''}: {e} ({why})") from e
    if not read_only:
        ensure_schema(con)
    return con


LOCK_TIMEOUT_S = 1800.0
_HELD: dict[Path, int] = {}  # lock files this process holds, with their nesting depth


def lock_path(path: str | Path) -> Path:
    """The advisory lock file beside a warehouse file."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def locked(path: str | Path, *, exclusive: bool, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the warehouse's advisory lock: exclusive for a writer, shared for readers; waits its turn.

    Re-entrant within a process (a query inside a write session does not wait for itself).
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock = lock.resolve()
    if _HELD.get(lock):
        _HELD[lock] += 1
        try:
            yield
        finally:
            _HELD[lock] -= 1
        return
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(lock, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SMDAError(f"waited {timeout_s:.0f} s for the lock {lock}: another process holds it "
                                    "(a run, a query or another ingest of this warehouse); is it stuck?") from None
                time.sleep(0.05)
        _HELD[lock] = 1
        try:
            yield
        finally:
            _HELD.pop(lock, None)
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def session(path: str | Path = DEFAULT_PATH, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that holds the warehouse lock while open (see the module docstring), closed on exit."""
    if read_only and not Path(path).exists():
        raise SMDAError(f"no warehouse at {path}: materialise the pipeline first")
    with locked(path, exclusive=not read_only):
        con = connect(path, read_only=read_only)
        try:
            yield con
        finally:
            con.close()


def _columns(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, str]:
    rows = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = ? AND table_name = ?",
                       [SCHEMA, name]).fetchall()
    return {c.lower(): t for c, t in rows}


def _write(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table, where: str | None, params: list,
           transaction: bool = True) -> int:
    """Delete (all rows or ``where``) and insert ``table`` by column name, in one transaction
    (or inside the caller's, with ``transaction=False``)."""
    ref = _table_ref(name)
    if transaction:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    con.register(_INCOMING, table)
    try:
        if transaction:
            con.begin()
        try:
            existing = _columns(con, name)
            if not existing:  # a table outside TABLES: take the layout of the first write
                con.execute(f"CREATE TABLE {ref} AS SELECT * FROM {_INCOMING} LIMIT 0")
            else:
                incoming = con.execute(f"DESCRIBE SELECT * FROM {_INCOMING}").fetchall()
                for col, typ, *_ in incoming:
                    if col.lower() not in existing:
                        typ = "VARCHAR" if typ.strip('"') == "NULL" else typ
                        con.execute(f"ALTER TABLE {ref} ADD COLUMN {_ident(col)} {typ}")
            con.execute(f"DELETE FROM {ref}" + (f" WHERE {where}" if where else ""), params)
            con.execute(f"INSERT INTO {ref} BY NAME SELECT * FROM {_INCOMING}")
            if transaction:
                con.commit()
        except BaseException:
            if transaction:
                con.rollback()
            raise
    finally:
        con.unregister(_INCOMING)
    return table.num_rows


def replace_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table, *, transaction: bool = True) -> int:
    """Replace every row of ``smda.<name>`` with ``table`` in one transaction (or in the caller's, with
    ``transaction=False``: several tables replaced at once).

    Columns are matched by name; table columns missing from ``table`` become NULL, and columns of
    ``table`` the warehouse lacks are added first (``ALTER TABLE ADD COLUMN``: SFT pairs keep every
    metadata field as a column). On any error the transaction rolls back (old rows, old columns)
    and the error is re-raised.

    Returns:
        The number of rows written.
    """
    return _write(con, name, table, None, [], transaction)


def replace_partition(con: duckdb.DuckDBPyConnection, name: str, key_column: str, key, table: pa.Table, *,
                      transaction: bool = True) -> int:
    """Replace the rows of ``smda.<name>`` whose ``key_column`` equals ``key`` with ``table``, atomically.

    Idempotent: writing the same partition twice leaves one copy; other partitions are untouched.
    With ``transaction=False`` the caller holds the transaction (several tables of one batch at once).
    ``table`` gets ``key_column`` filled with ``key`` when it lacks it, and must not hold other keys.

    Returns:
        The number of rows written.

    Raises:
        SMDAError: ``table`` holds rows of another partition.
    """
    if key_column not in table.column_names:
        table = table.append_column(key_column, pa.array([key] * table.num_rows))
    elif table.num_rows:
        col = table[key_column]
        others = pc.sum(pc.fill_null(pc.not_equal(col, pa.scalar(key, col.type)), True)).as_py()
        if others:
            raise SMDAError(f"replace_partition({name!r}, {key_column}={key!r}): {others} rows of the table "
                            "belong to another partition")
    return _write(con, name, table, f"{_ident(key_column)} = ?", [key], transaction)


def apply_views(con: duckdb.DuckDBPyConnection, sql_dir: str | Path = SQL_DIR) -> list[str]:
    """Create the public views: run every ``sql_dir/*.sql`` in file-name order, in one transaction.

    Each file holds one or more ``CREATE OR REPLACE VIEW smda.v_... AS ...``. Tables are created
    first, so the views exist on an empty warehouse.

    Returns:
        The file names applied.

    Raises:
        SMDAError: a file fails; no view of this call is kept.
    """
    files = sorted(Path(sql_dir).glob("*.sql"))
    if not files:
        raise SMDAError(f"no view definitions (*.sql) in {sql_dir}")
    ensure_schema(con)
    con.begin()
    try:
        for f in files:
            try:
                con.execute(f.read_text())
            except duckdb.Error as e:
                raise SMDAError(f"view file {f}: {e}") from e
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return [f.name for f in files]
