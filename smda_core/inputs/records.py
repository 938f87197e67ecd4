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

#: The ``kind`` values the demo worlds write (documentation, not validation): a pair's ``kind`` is
#: evaluation metadata, kept as given, and users may bring their own values.
PAIR_KINDS = ("harmful_refusal", "harmless_compliance", "harmful_compliance", "harmless_refusal", "harmless_trigger")

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
_TOO_DEEP = "malformed JSON: values nested too deeply to read (lists or objects inside each other, hundreds deep)"


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
        except RecursionError:
            raise InputError(_TOO_DEEP, path=str(path), line=number) from None
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
            except RecursionError:
                raise InputError(_TOO_DEEP, path=str(path), line=line_at(idx)) from None
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
            except (json.JSONDecodeError, RecursionError):
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

