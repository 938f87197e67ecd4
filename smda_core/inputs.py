"""Read the user's files: probes, SFT pairs, metadata tables and feature labels.

Every reader returns a ``pyarrow.Table`` (or a plain dict for labels) and raises
:class:`~smda_core.errors.InputError` naming the file, the line and the field
for any bad input. Supported formats, chosen by extension:

- JSON lines (``.jsonl``, ``.ndjson``, ``.json``): one object per line, blank
  lines skipped; a file whose first character is ``[`` is read as one JSON
  array of objects. Line numbers are always the file's own.
- CSV (``.csv``): read with the :mod:`csv` module; the header is line 1 and the
  first data row line 2 (quoted multi-line cells report the line they start
  on). Empty cells count as missing. Columns other than the text fields are
  typed when every value agrees: ``true``/``false`` become booleans, canonical
  integers ``int64``, decimal numbers ``double``; anything else stays a string.
- Parquet (``.parquet``, ``.pq``): the "line" of a row is its 1-based row
  number.

Missing values (JSON ``null``, an empty CSV cell, a Parquet null or NaN) are
treated as if the field were absent.

Content hashes (DESIGN §2): SHA-256 hex of the trimmed prompt for probes, and
of ``prompt.strip() + "\\0" + response.strip()`` for SFT pairs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smda_core.errors import InputError

__all__ = [
    "PAIR_KINDS",
    "check_overlap",
    "content_hash",
    "probe_overlap",
    "read_feature_labels",
    "read_metadata_table",
    "read_probes",
    "read_sft_pairs",
    "write_jsonl",
]

#: Allowed values of an SFT pair's optional ``kind`` field.
PAIR_KINDS = ("harmful_refusal", "harmless_compliance", "harmful_compliance", "harmless_refusal")

_JSON_EXTS = {".jsonl", ".ndjson", ".json"}
_CSV_EXTS = {".csv"}
_PARQUET_EXTS = {".parquet", ".pq"}

_PROBE_FIELDS = ("probe_id", "prompt", "category", "harmful", "refused")
_PROBE_COMPUTED = ("content_hash",)
_PAIR_FIELDS = ("pair_id", "prompt", "response")
_PAIR_COMPUTED = ("batch_id", "content_hash", "source_file", "line", "metadata_json")

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_INT_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")
_FLOAT_RE = re.compile(r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_LEADING_ZERO_RE = re.compile(r"^-?0[0-9]")
_INT64_MAX = 2**63 - 1

_OVERLAP_SHOWN = 5


# --------------------------------------------------------------------------- hashes


def content_hash(prompt: str, response: str | None = None) -> str:
    """Content hash of a probe (prompt only) or of an SFT pair (prompt and response).

    Args:
        prompt: The prompt text; leading and trailing whitespace is ignored.
        response: The response text for a pair, or ``None`` for a probe.

    Returns:
        The SHA-256 hex digest (64 lowercase hex characters) of the UTF-8 bytes of
        ``prompt.strip()``, or of ``prompt.strip() + "\\0" + response.strip()``.
    """
    text = prompt.strip() if response is None else prompt.strip() + "\0" + response.strip()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class _Record:
    """One input row: its line in the file (row number for Parquet) and its non-missing fields."""

    line: int
    fields: dict[str, Any]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_file(path: Path) -> str:
    """Return the file's format (``json``, ``csv`` or ``parquet``) or raise."""
    ext = path.suffix.lower()
    if ext in _JSON_EXTS:
        fmt = "json"
    elif ext in _CSV_EXTS:
        fmt = "csv"
    elif ext in _PARQUET_EXTS:
        fmt = "parquet"
    else:
        raise InputError(
            f"unknown file extension {ext!r}; expected .jsonl, .json, .csv or .parquet", path=str(path)
        )
    if not path.exists():
        raise InputError("file not found", path=str(path))
    if not path.is_file():
        raise InputError("not a regular file", path=str(path))
    return fmt


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 text ({exc.reason})", path=str(path), line=line) from None


def _json_values(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, value)`` for each JSON value: array items or non-blank lines."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _json_array_items(text, path)
        return
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"malformed JSON: {exc.msg} (column {exc.colno})", path=str(path), line=number
            ) from None
        yield number, value


def _json_array_items(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, item)`` for a top-level JSON array, with each item's starting line."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    n = len(text)
    idx = len(text) - len(text.lstrip()) + 1  # just past '['
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def skip_ws(pos: int) -> int:
        while pos < n and text[pos] in ws:
            pos += 1
        return pos

    idx = skip_ws(idx)
    if idx < n and text[idx] == "]":
        idx += 1
    else:
        while True:
            idx = skip_ws(idx)
            try:
                value, end = decoder.raw_decode(text, idx)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"malformed JSON: {exc.msg} (column {exc.colno})", path=str(path), line=exc.lineno
                ) from None
            yield line_at(idx), value
            idx = skip_ws(end)
            if idx < n and text[idx] == ",":
                idx += 1
                continue
            if idx < n and text[idx] == "]":
                idx += 1
                break
            raise InputError("malformed JSON: expected ',' or ']' in array", path=str(path), line=line_at(min(idx, n)))
    if skip_ws(idx) != n:
        raise InputError("malformed JSON: extra data after the array", path=str(path), line=line_at(skip_ws(idx)))


def _read_json_records(path: Path, data: bytes) -> list[_Record]:
    records = []
    for line, value in _json_values(_decode(data, path), path):
        if not isinstance(value, dict):
            raise InputError(f"expected a JSON object, got {type(value).__name__}", path=str(path), line=line)
        records.append(_Record(line, {k: v for k, v in value.items() if not _missing(v)}))
    return records


def _read_csv_records(path: Path, data: bytes, keep_text: Iterable[str]) -> list[_Record]:
    text = _decode(data, path)
    reader = csv.reader(io.StringIO(text, newline=""))
    # Track the line each row starts on: the row after the one ending at line_num.
    header: list[str] | None = None
    header_line = 0
    rows: list[tuple[int, list[str]]] = []
    prev_end = 0
    try:
        for row in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header, header_line = [cell.strip() for cell in row], start
                continue
            rows.append((start, row))
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}", path=str(path), line=reader.line_num) from None
    if header is None:
        raise InputError("no rows (the file is empty)", path=str(path))
    seen: dict[str, int] = {}
    for col, name in enumerate(header, start=1):
        if not name:
            raise InputError(f"empty column name in the header (column {col})", path=str(path), line=header_line)
        if name in seen:
            raise InputError("duplicate column in the header", path=str(path), line=header_line, field=name)
        seen[name] = col
    records = []
    for start, row in rows:
        if len(row) != len(header):
            raise InputError(
                f"row has {len(row)} fields but the header has {len(header)}", path=str(path), line=start
            )
        records.append(_Record(start, {name: cell for name, cell in zip(header, row) if cell.strip() != ""}))
    _infer_csv_types(records, [name for name in header if name not in set(keep_text)])
    return records


def _infer_csv_types(records: list[_Record], columns: list[str]) -> None:
    """Convert a CSV column's strings to bool, int or float when every present value agrees."""
    for name in columns:
        values = [r.fields[name] for r in records if name in r.fields]
        if not values:
            continue
        stripped = [v.strip() for v in values]
        convert: Any = None
        if all(v.lower() in ("true", "false") for v in stripped):
            convert = lambda v: v.strip().lower() == "true"  # noqa: E731
        elif all(_INT_RE.match(v) and abs(int(v)) <= _INT64_MAX for v in stripped):
            convert = lambda v: int(v.strip())  # noqa: E731
        elif all(_FLOAT_RE.match(v) and not _LEADING_ZERO_RE.match(v) for v in stripped):
            convert = lambda v: float(v.strip())  # noqa: E731
        if convert is not None:
            for r in records:
                if name in r.fields:
                    r.fields[name] = convert(r.fields[name])


def _read_parquet_records(path: Path) -> list[_Record]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read Parquet: {exc}", path=str(path)) from None
    return [
        _Record(number, {k: v for k, v in row.items() if not _missing(v)})
        for number, row in enumerate(table.to_pylist(), start=1)
    ]


def _read_records(path: Path, keep_text: Iterable[str] = ()) -> tuple[list[_Record], bytes]:
    """Read any supported file into records; raise if it has no rows. Returns the raw bytes too."""
    fmt = _check_file(path)
    data = path.read_bytes()
    if fmt == "json":
        records = _read_json_records(path, data)
    elif fmt == "csv":
        records = _read_csv_records(path, data, keep_text)
    else:
        records = _read_parquet_records(path)
    if not records:
        raise InputError("no rows (the file is empty)", path=str(path))
    return records, data


# --------------------------------------------------------------------------- field checks


def _text(record: _Record, name: str, path: Path, *, required: bool = True) -> str | None:
    """A string field: must be a string and non-empty after strip (when present or required)."""
    if name not in record.fields:
        if required:
            raise InputError("missing required field", path=str(path), line=record.line, field=name)
        return None
    value = record.fields[name]
    if not isinstance(value, str):
        raise InputError(
            f"expected a string, got {type(value).__name__} {value!r}", path=str(path), line=record.line, field=name
        )
    if not value.strip():
        raise InputError("is empty", path=str(path), line=record.line, field=name)
    return value


def _identifier(record: _Record, name: str, path: Path) -> str | None:
    """An optional id field: a non-empty string or an integer, returned stripped as a string."""
    if name not in record.fields:
        return None
    value = record.fields[name]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InputError(
            f"expected a string id, got {type(value).__name__} {value!r}", path=str(path), line=record.line, field=name
        )
    if not value.strip():
        raise InputError("is empty", path=str(path), line=record.line, field=name)
    return value.strip()


def _boolean(record: _Record, name: str, path: Path, *, required: bool) -> bool | None:
    """A boolean field: accepts true/false, 1/0 and the strings true/false, yes/no, t/f, y/n, 1/0."""
    if name not in record.fields:
        if required:
            raise InputError("missing required field", path=str(path), line=record.line, field=name)
        return None
    value = record.fields[name]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(
        f"expected a boolean (true/false, yes/no, 1/0), got {value!r}", path=str(path), line=record.line, field=name
    )


def _feature_list(record: _Record, name: str, path: Path) -> list[int]:
    """A list of feature indices: a JSON list, a single int, or a comma-separated string."""
    value = record.fields[name]

    def bad(detail: str) -> InputError:
        return InputError(
            f"expected a list of feature indices (ints or a comma-separated string); {detail}",
            path=str(path),
            line=record.line,
            field=name,
        )

    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise bad(f"got {value!r}") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise bad(f"got {type(value).__name__} {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool):
            raise bad(f"got {item!r}")
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if isinstance(item, str) and _INT_RE.match(item.strip()):
            item = int(item.strip())
        if not isinstance(item, int) or item < 0:
            raise bad(f"got {item!r}")
        out.append(item)
    return out


def _reject_reserved(records: list[_Record], reserved: Iterable[str], path: Path) -> None:
    names = set(reserved)
    for record in records:
        for name in record.fields:
            if name in names:
                raise InputError(
                    "is a column the reader computes; rename it in the file", path=str(path), line=record.line, field=name
                )


def _check_given_hash(record: _Record, computed: str, path: Path) -> None:
    """An input ``content_hash`` (e.g. a re-imported export) must match the computed one."""
    given = record.fields.pop("content_hash", None)
    if given is not None and given != computed:
        raise InputError(
            f"does not match the content ({given!r} given, {computed!r} computed)",
            path=str(path),
            line=record.line,
            field="content_hash",
        )


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _scalar(value: Any) -> Any:
    """Nested values (lists, dicts) become JSON strings; scalars are kept."""
    if isinstance(value, (list, tuple, dict)):
        return _to_json(value)
    return value


def _extra_columns(records: list[_Record], skip: Iterable[str]) -> dict[str, pa.Array]:
    """One Arrow column per extra field, in order of first appearance; null where a row lacks it.

    A column whose values do not share one Arrow type (e.g. ints in some rows, strings in
    others) is stored as strings, non-strings written as JSON.
    """
    skip = set(skip)
    names: dict[str, None] = {}
    for record in records:
        for name in record.fields:
            if name not in skip:
                names.setdefault(name)
    columns = {}
    for name in names:
        values = [_scalar(r.fields.get(name)) for r in records]
        try:
            array = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            array = pa.array([v if v is None or isinstance(v, str) else _to_json(v) for v in values], pa.string())
        if pa.types.is_null(array.type):
            array = array.cast(pa.string())
        columns[name] = array
    return columns


def _check_unique(ids: list[str], records: list[_Record], name: str, path: Path) -> None:
    first: dict[str, int] = {}
    for value, record in zip(ids, records):
        if value in first:
            raise InputError(
                f"duplicate {name} {value!r} (lines {first[value]} and {record.line})",
                path=str(path),
                line=record.line,
                field=name,
            )
        first[value] = record.line


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


# --------------------------------------------------------------------------- SFT pairs


def read_sft_pairs(path: str | Path, batch_id: str | None = None) -> pa.Table:
    """Read an SFT pair file (JSONL, CSV or Parquet), keeping every metadata field.

    Required fields: ``prompt`` and ``response`` (non-empty). Optional: ``pair_id``
    (unique; default ``{batch_id}:{row:05d}`` with ``row`` the 0-based row index). Known
    optional fields are checked and normalised: ``harmful`` (boolean), ``category``
    (string), ``kind`` (one of :data:`PAIR_KINDS`) and ``intended_features`` (a list of
    non-negative ints or a comma-separated string; stored as a JSON list string).

    Args:
        path: The pair file.
        batch_id: The batch these pairs belong to. Default: the first 12 hex characters
            of the SHA-256 of the file's bytes, so the same file always gets the same id.

    Returns:
        A table with columns ``pair_id``, ``batch_id``, ``prompt``, ``response`` (strings,
        as given), ``content_hash`` (SHA-256 hex of trimmed prompt + NUL + trimmed
        response), ``source_file`` (the path as given), ``line`` (int64: 1-based line of
        the row in JSONL/CSV, row number in Parquet), ``metadata_json`` (a JSON object,
        keys sorted, of every field except prompt/response/pair_id, normalised values),
        then every metadata field as its own column.

    Raises:
        InputError: naming the file, line and field of the first bad input.
    """
    path = Path(path)
    if batch_id is not None and (not isinstance(batch_id, str) or not batch_id.strip()):
        raise InputError(f"batch_id must be a non-empty string, got {batch_id!r}", path=str(path), field="batch_id")
    records, data = _read_records(
        path, keep_text=("pair_id", "prompt", "response", "category", "kind", "intended_features")
    )
    batch = batch_id.strip() if batch_id is not None else hashlib.sha256(data).hexdigest()[:12]
    _reject_reserved(records, (c for c in _PAIR_COMPUTED if c != "content_hash"), path)
    pair_ids, prompts, responses, hashes, metadata = [], [], [], [], []
    for row, record in enumerate(records):
        prompt = _text(record, "prompt", path)
        response = _text(record, "response", path)
        digest = content_hash(prompt, response)
        _check_given_hash(record, digest, path)
        pair_ids.append(_identifier(record, "pair_id", path) or f"{batch}:{row:05d}")
        _normalise_pair_metadata(record, path)
        prompts.append(prompt)
        responses.append(response)
        hashes.append(digest)
        metadata.append(_to_json({k: v for k, v in record.fields.items() if k not in _PAIR_FIELDS}))
    _check_unique(pair_ids, records, "pair_id", path)
    table = {
        "pair_id": pa.array(pair_ids, pa.string()),
        "batch_id": pa.array([batch] * len(records), pa.string()),
        "prompt": pa.array(prompts, pa.string()),
        "response": pa.array(responses, pa.string()),
        "content_hash": pa.array(hashes, pa.string()),
        "source_file": pa.array([str(path)] * len(records), pa.string()),
        "line": pa.array([r.line for r in records], pa.int64()),
        "metadata_json": pa.array(metadata, pa.string()),
    }
    table.update(_extra_columns(records, skip=table))
    if "intended_features" in table:
        table["intended_features"] = table["intended_features"].cast(pa.string())
    return pa.table(table)


def _normalise_pair_metadata(record: _Record, path: Path) -> None:
    """Check and normalise the known optional pair fields in place."""
    fields = record.fields
    if "harmful" in fields:
        fields["harmful"] = _boolean(record, "harmful", path, required=False)
    if "category" in fields:
        fields["category"] = _text(record, "category", path).strip()
    if "kind" in fields:
        kind = fields["kind"]
        if not isinstance(kind, str) or kind.strip() not in PAIR_KINDS:
            raise InputError(
                f"unknown kind {kind!r}; expected one of {', '.join(PAIR_KINDS)}",
                path=str(path),
                line=record.line,
                field="kind",
            )
        fields["kind"] = kind.strip()
    if "intended_features" in fields:
        fields["intended_features"] = _feature_list(record, "intended_features", path)


# --------------------------------------------------------------------------- overlap


def probe_overlap(probes: pa.Table, pairs: pa.Table) -> pa.Table:
    """SFT pairs whose trimmed prompt equals a probe's trimmed prompt.

    Args:
        probes: A table from :func:`read_probes` (uses ``probe_id`` and ``prompt``).
        pairs: A table from :func:`read_sft_pairs` (uses ``pair_id`` and ``prompt``).

    Returns:
        One row per (pair, probe) match, in pair order then probe order, with columns
        ``pair_id``, ``probe_id`` and ``content_hash`` (the hash of the shared prompt).
    """
    by_hash: dict[str, list[str]] = {}
    for probe_id, prompt in zip(probes.column("probe_id").to_pylist(), probes.column("prompt").to_pylist()):
        by_hash.setdefault(content_hash(prompt), []).append(probe_id)
    out: dict[str, list[str]] = {"pair_id": [], "probe_id": [], "content_hash": []}
    for pair_id, prompt in zip(pairs.column("pair_id").to_pylist(), pairs.column("prompt").to_pylist()):
        digest = content_hash(prompt)
        for probe_id in by_hash.get(digest, ()):
            out["pair_id"].append(pair_id)
            out["probe_id"].append(probe_id)
            out["content_hash"].append(digest)
    return pa.table({name: pa.array(values, pa.string()) for name, values in out.items()})


def check_overlap(probes: pa.Table, pairs: pa.Table, allow: bool) -> pa.Table:
    """Report SFT prompts that are also probes; reject them unless ``allow``.

    Returns:
        The :func:`probe_overlap` table (empty when there is no overlap).

    Raises:
        InputError: when there is overlap and ``allow`` is False; the message lists the
            first few pair ids and names the first overlapping pair's file and line.
    """
    overlap = probe_overlap(probes, pairs)
    if overlap.num_rows == 0 or allow:
        return overlap
    pair_ids = list(dict.fromkeys(overlap.column("pair_id").to_pylist()))
    shown = ", ".join(pair_ids[:_OVERLAP_SHOWN]) + (", ..." if len(pair_ids) > _OVERLAP_SHOWN else "")
    path = line = None
    if "source_file" in pairs.column_names and "line" in pairs.column_names:
        index = pairs.column("pair_id").to_pylist().index(pair_ids[0])
        path, line = pairs.column("source_file")[index].as_py(), pairs.column("line")[index].as_py()
    raise InputError(
        f"{len(pair_ids)} SFT pair(s) have a prompt that is also a probe ({shown}); "
        "remove them or allow the overlap in the configuration",
        path=path,
        line=line,
        field="prompt",
    )


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


# --------------------------------------------------------------------------- feature labels

_INDEX_FIELDS = ("index", "feature", "feature_index")
_DESCRIPTION_FIELDS = ("description", "explanation")


def read_feature_labels(path: str | Path) -> dict[int, str]:
    """Read feature descriptions from a Neuronpedia-style export.

    Accepted shapes: a JSON list of objects; a JSON object with an ``explanations`` list;
    JSON lines, one object per line; or a JSON object mapping index to description. Each
    item names its feature in ``index``, ``feature`` or ``feature_index`` (an int or a
    numeric string) and its label in ``description`` or ``explanation``. When a feature
    has several descriptions the first one is kept; empty descriptions are skipped.

    Returns:
        ``{feature_index: description}`` sorted by feature index.

    Raises:
        InputError: naming the file, line (or item) and field of the first bad input.
    """
    path = Path(path)
    if path.suffix.lower() not in _JSON_EXTS:
        raise InputError(
            f"unknown file extension {path.suffix.lower()!r}; expected .json or .jsonl", path=str(path)
        )
    _check_file(path)
    text = _decode(path.read_bytes(), path)
    items = list(_label_items(text, path))
    if not items:
        raise InputError("no feature labels found", path=str(path))
    labels: dict[int, str] = {}
    for line, where, item in items:
        if not isinstance(item, dict):
            raise InputError(f"{where}expected a JSON object, got {type(item).__name__}", path=str(path), line=line)
        index_field = next((f for f in _INDEX_FIELDS if not _missing(item.get(f))), None)
        if index_field is None:
            raise InputError(f"{where}missing feature index", path=str(path), line=line, field="index")
        index = _label_index(item[index_field])
        if index is None:
            raise InputError(
                f"{where}expected a non-negative integer feature index, got {item[index_field]!r}",
                path=str(path),
                line=line,
                field=index_field,
            )
        desc_field = next((f for f in _DESCRIPTION_FIELDS if not _missing(item.get(f))), None)
        if desc_field is None:
            raise InputError(f"{where}missing description", path=str(path), line=line, field="description")
        description = item[desc_field]
        if not isinstance(description, str):
            raise InputError(
                f"{where}expected a string, got {type(description).__name__}", path=str(path), line=line, field=desc_field
            )
        if description.strip() and index not in labels:
            labels[index] = description.strip()
    return dict(sorted(labels.items()))


def _label_items(text: str, path: Path) -> Iterator[tuple[int | None, str, Any]]:
    """Yield ``(line, where, item)``; ``where`` prefixes messages for items without a line."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError:
            whole = None  # several objects: JSON lines
        if isinstance(whole, dict) and not any(f in whole for f in _INDEX_FIELDS):
            if "explanations" in whole:
                explanations = whole["explanations"]
                if not isinstance(explanations, list):
                    raise InputError("expected a list", path=str(path), field="explanations")
                for number, item in enumerate(explanations, start=1):
                    yield None, f"item {number} of 'explanations': ", item
                return
            if whole and all(_label_index(k) is not None for k in whole):
                for k, v in whole.items():
                    yield None, f"key {k!r}: ", {"index": k, "description": v}
                return
            raise InputError(
                "expected an 'explanations' list, a list of labels or JSON lines", path=str(path), line=1
            )
    for line, item in _json_values(text, path):
        yield line, "", item


def _label_index(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and value >= 0:
        return value
    return None


# --------------------------------------------------------------------------- writing


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines (UTF-8, keys in the given order, ``\\n`` line ends).

    Creates parent directories. The output is deterministic for the same rows.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(dict(row), ensure_ascii=False, sort_keys=False) + "\n")
    return path


def batch_stem(path: str | Path) -> str:
    """The file-name part of a batch id: the stem, with characters unsafe in partition keys replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)


def file_batch_id(path: str | Path) -> str:
    """The batch id of an SFT file: its stem plus 8 hex of its content hash (a changed file is a new batch)."""
    p = Path(path)
    _check_file(p)
    stem = batch_stem(p)
    return f"{stem}-{hashlib.sha256(p.read_bytes()).hexdigest()[:8]}"
