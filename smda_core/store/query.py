"""Read-only queries: the warehouse's user-facing surface.

Everything here runs SQL that a person wrote: ``smda query``, the curation rule ``sql:``, the
figures and a notebook's ibis connection. Opening the file read-only is not enough for that:
DuckDB still lets such a connection write files (``COPY (SELECT ...) TO 'file'``, ``EXPORT
DATABASE``), read any file (``read_csv('/etc/passwd')``, ``read_text``, ``glob``), open other
databases (``ATTACH``), install and load extensions, and change its own settings. A ``COPY ... TO``
once put a pickle into the warehouse's folder that the pipeline later loaded. So every
connection opened here is locked down (:func:`open_read_only`):

- the file is opened read-only, with external access off (no file or network I/O besides the
  warehouse itself), extensions neither installed nor loaded on demand, community extensions
  off, and Python variables not readable as tables;
- then ``SET lock_configuration = true``: nothing on the connection can be changed any more;
- :func:`query` also runs exactly one ``SELECT`` statement (``WITH ... SELECT``, ``FROM ...``,
  ``DESCRIBE`` and ``SHOW`` parse as SELECT) and refuses anything else with an :class:`SMDAError`
  that names the statement and why.

DuckDB keeps one database per file within a process: while a connection from here is open, the
same process cannot open the file for writing or with other settings (and the reverse).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from smda_core.errors import SMDAError
from smda_core.store.warehouse import DEFAULT_PATH, SCHEMA, _table_ref, connect, locked

READ_ONLY_CONFIG: dict[str, object] = {
    "enable_external_access": False,  # COPY, EXPORT, ATTACH, INSTALL, read_*(), glob(): no files but the warehouse
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "python_enable_replacements": False,  # no Python variables read as tables (ibis turns this off too)
}
"""DuckDB settings of every query connection, applied when the file opens; then the configuration is locked."""

TIME_ZONE = "UTC"  # ibis expects it; set before the lock, since DuckDB takes no time zone as a config key

_QUERY_ONLY = "smda query runs one read-only SELECT"
_EXPORT = "export results with smda query --format csv|json|parquet --out FILE instead"
_WRITES = "writes to the warehouse, which is read-only for queries; writes go through the pipeline"
_SETTINGS = "changes a setting (SET, RESET, USE); the query connection's settings are locked"
_WHY = {  # duckdb.StatementType name -> why it is refused
    "COPY": f"reads or writes a file ({_EXPORT})",
    "EXPORT": f"writes the database out to files ({_EXPORT})",
    "COPY_DATABASE": "copies the database into another file",
    "ATTACH": "opens another database file; queries see the warehouse alone",
    "DETACH": "detaches a database; queries see the warehouse alone",
    "LOAD": "installs or loads an extension; extensions are off for queries",
    "SET": _SETTINGS,
    "VARIABLE_SET": _SETTINGS,
    "PRAGMA": "runs a pragma, which changes settings or runs commands; SELECT from the pragma_*() functions instead",
    "CALL": "calls a procedure; SELECT * FROM the function() reads the same",
    "EXPLAIN": "EXPLAIN ANALYZE runs its statement; run the SELECT itself",
    "TRANSACTION": "controls a transaction; each query runs alone",
    "PREPARE": "prepares a statement; pass values as bound parameters (?) instead",
    "EXECUTE": "executes a prepared statement; pass values as bound parameters (?) instead",
    "MULTI": "expands into several statements (PIVOT without IN: name the values, ON col IN (...))",
    **{kind: _WRITES for kind in ("CREATE", "CREATE_FUNC", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER",
                                  "MERGE_INTO", "VACUUM", "ANALYZE")},
}
_FIRST_WORD = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*\(*\s*([A-Za-z_]+)", re.DOTALL)


def _one_line(e: Exception) -> str:
    """DuckDB's message up to its source excerpt (``LINE 1: ...``), on one line."""
    kept = []
    for line in str(e).splitlines():
        if not line.strip() or line.startswith("LINE "):
            break
        kept.append(line.strip())
    return " ".join(kept) or type(e).__name__


def _locked(con: duckdb.DuckDBPyConnection) -> bool:
    # fetchall, not fetchone: DuckDB 2 refuses other work on a connection that holds an unfinished result
    [(is_locked,)] = con.execute("SELECT current_setting('lock_configuration')").fetchall()
    return bool(is_locked)


def open_read_only(path: str | Path = DEFAULT_PATH) -> duckdb.DuckDBPyConnection:
    """Open the warehouse for user SQL: read-only, :data:`READ_ONLY_CONFIG`, time zone UTC, configuration locked.

    The caller closes the connection; :func:`query` and :func:`row_counts` also hold the warehouse's
    shared lock (:func:`~smda_core.store.warehouse.locked`) meanwhile.

    Raises:
        SMDAError: no warehouse at ``path``, or it cannot be opened (another process writes it, or this
            process holds it open for writing).
    """
    con = connect(path, read_only=True, config=READ_ONLY_CONFIG)
    try:
        if not _locked(con):  # a second connection of this process shares the first one's (locked) database
            try:
                con.execute(f"SET GLOBAL TimeZone = '{TIME_ZONE}'")
                con.execute("SET lock_configuration = true")
            except duckdb.Error:
                if not _locked(con):  # not another thread locking it first
                    raise
    except BaseException:
        con.close()
        raise
    return con


@contextmanager
def reading(path: str | Path = DEFAULT_PATH) -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`open_read_only` under the warehouse's shared lock (writers wait), closed on exit."""
    if not Path(path).exists():
        raise SMDAError(f"no warehouse at {path}: materialise the pipeline first")
    with locked(path, exclusive=False):
        con = open_read_only(path)
        try:
            yield con
        finally:
            con.close()


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Accept ``sql`` when it is exactly one SELECT statement; raise :class:`SMDAError` naming what it is otherwise."""
    try:
        statements = con.extract_statements(sql)
        kinds = [s.type.name for s in statements]
    except duckdb.Error as e:
        raise SMDAError(f"query failed: {_one_line(e)}") from e
    except ValueError as e:  # a statement type the Python binding cannot name (UPDATE EXTENSIONS in 2.0.1)
        raise SMDAError(f"{_QUERY_ONLY}; got a statement of a type it does not know ({e})") from e
    if not statements:
        raise SMDAError(f"{_QUERY_ONLY}; got no statement")
    if len(statements) > 1:
        raise SMDAError(f"{_QUERY_ONLY}; got {len(statements)} statements ({', '.join(kinds)}): run one at a time")
    [statement], [kind] = statements, kinds
    if kind == "SELECT":
        return
    word = _FIRST_WORD.match(statement.query)
    word = word.group(1).upper() if word else kind
    name = kind if word == kind else f"{word} ({kind})"
    raise SMDAError(f"{_QUERY_ONLY}; got {name}: {_WHY.get(kind, 'not a SELECT')}")


def query(path: str | Path, sql: str, params: list | None = None) -> pa.Table:
    """Run one SELECT on a locked-down read-only connection (:func:`open_read_only`) and return an Arrow table.

    Args:
        path: the warehouse file.
        sql: exactly one SELECT (``WITH ... SELECT`` counts); ``?`` placeholders take ``params``.
        params: values bound to the placeholders.

    Raises:
        SMDAError: ``sql`` is not exactly one SELECT (COPY, EXPORT, ATTACH, INSTALL, LOAD, SET, PRAGMA,
            CREATE, INSERT, ..., or several statements); it reads a file (``read_csv``, ``glob``, ...):
            file access is off for queries; it writes; or it fails otherwise. Each message is one line.
    """
    with reading(path) as con:
        check_select(con, sql)
        try:
            rel = con.sql(sql, params=params) if params else con.sql(sql)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.PermissionException as e:
            raise SMDAError(f"file access is off for queries ({_one_line(e)}): query the warehouse's tables and "
                            f"views (smda.*); to write results, use smda query --format csv|json|parquet --out FILE") from e
        except duckdb.Error as e:
            if "read-only" in str(e):
                raise SMDAError(f"the warehouse {path} is opened read-only for queries; writes (INSERT, UPDATE, "
                                f"DELETE, CREATE, DROP, ...) go through the pipeline: {_one_line(e)}") from e
            raise SMDAError(f"query failed on {path}: {_one_line(e)}") from e


class _DuckDB2Compat:
    """A DuckDB connection with the cursor methods ibis 12 calls, which DuckDB 2 removed from connections.

    ibis 12's ``list_tables``, ``list_databases``, ``sql`` and ``to_pyarrow_batches`` call
    ``con.execute(...).fetch_arrow_table()`` / ``.fetch_record_batch()``; DuckDB 2.0 names them
    ``to_arrow_table`` / ``to_arrow_reader``. Everything else is the wrapped connection's.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, *args, **kwargs):
        self._con.execute(*args, **kwargs)
        return self

    def fetch_arrow_table(self) -> pa.Table:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
            return self._con.to_arrow_table()

    def fetch_record_batch(self, rows_per_batch: int = 1_000_000) -> pa.RecordBatchReader:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
            return self._con.to_arrow_reader(rows_per_batch)


class _SettingsInEffect:
    """The locked connection as ``ibis.duckdb.from_connection`` sees it while setting up.

    ibis runs ``SET timezone = 'UTC'`` and ``SET python_enable_replacements = 'False'`` on connect. A
    locked configuration refuses even a SET that changes nothing, and :func:`open_read_only` has
    already set both (before locking); so here such a SET is checked against the current value
    instead of run. Other statements run as they are.
    """

    _SET = re.compile(r"^\s*SET\s+(\w+)\s*=\s*'([^']*)'\s*;?\s*$", re.IGNORECASE)

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, sql, *args, **kwargs):
        m = self._SET.match(sql) if isinstance(sql, str) and not args and not kwargs else None
        if m is None:
            return self._con.execute(sql, *args, **kwargs)
        key, want = m.groups()
        [(have,)] = self._con.execute("SELECT current_setting(?)", [key]).fetchall()
        if str(have).lower() != want.lower():
            raise SMDAError(f"ibis sets {key} to {want!r} on connect, but the query connection's settings are "
                            f"locked with {key} = {have!r}")
        return self._con


def ibis_connection(path: str | Path = DEFAULT_PATH):
    """A read-only ibis DuckDB backend on the warehouse, on the same locked-down connection as :func:`query`.

    Read a view with ``con.table("v_policy", database="smda")``; ``con.list_tables(database="smda")``
    lists the tables and views. Writes fail (the file is opened read-only), and so do file access
    (``raw_sql("COPY ...")``, ``read_csv``), extensions and SET. Close it with ``con.disconnect()``.
    """
    import ibis

    if not Path(path).exists():
        raise SMDAError(f"no warehouse at {path}: materialise the pipeline first")
    con = open_read_only(path)
    try:
        backend = ibis.duckdb.from_connection(_SettingsInEffect(con))
    except BaseException:
        con.close()
        raise
    backend.con = con if hasattr(con, "fetch_arrow_table") else _DuckDB2Compat(con)
    return backend


def row_counts(path: str | Path = DEFAULT_PATH) -> dict[str, int]:
    """Row count of every public view ``smda.v_*``, by view name."""
    with reading(path) as con:
        views = [v for (v,) in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = ? AND starts_with(view_name, 'v_') "
            "ORDER BY view_name", [SCHEMA]).fetchall()]
        return {v: con.execute(f"SELECT count(*) FROM {_table_ref(v)}").fetchone()[0] for v in views}


def flat_columns(table: pa.Table) -> pa.Table:
    """The table with its LIST, STRUCT and MAP columns as JSON text (for CSV, which has no nested cells)."""
    import json

    for i, f in enumerate(table.schema):
        if pa.types.is_nested(f.type):
            cells = [None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in table[f.name].to_pylist()]
            table = table.set_column(i, f.name, pa.array(cells, pa.string()))
    return table
