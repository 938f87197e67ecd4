"""The readers fuzzed: any bytes in any supported format give rows, or an InputError that names the file
(and the line and field where one is to blame); never another exception.

Inputs are built by hypothesis from the shapes users' files take (JSON lines with the readers' own field
names and odd values, CSV with quotes and ragged rows, Parquet with every Arrow type, label exports in
their three shapes), plus random bytes and text in other encodings. Small example counts keep it fast.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smda_core import inputs
from smda_core.errors import InputError

FUZZ = settings(max_examples=int(os.environ.get("SMDA_FUZZ_EXAMPLES", "80")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["prompt", "response", "pair_id", "probe_id", "category", "harmful", "refused", "kind", "intended_features",
        "content_hash", "id", "batch_id", "line", "source_file", "metadata_json", "index", "feature", "feature_index",
        "description", "explanation", "note", ""]
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), TEXT,
                   st.sampled_from(["true", "no", "1", "harmful_refusal", "3, 5", "[1, 2]", " ", "NaN", "-0"]))
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                     max_leaves=6)
RECORD = st.dictionaries(st.sampled_from(KEYS), VALUE, max_size=6)

READERS = {
    "pairs": inputs.read_sft_pairs,
    "probes": inputs.read_probes,
    "metadata": lambda path: inputs.read_metadata_table(path, "id"),
}


def _outcome(read, path: Path):
    """The reader's result, which must be rows or an InputError that names the file."""
    try:
        table = read(path)
    except InputError as exc:
        assert exc.path == str(path) and str(path) in str(exc), repr(exc)
        file_level = any(w in str(exc) for w in ("empty", "Parquet", "not found", "no feature labels", "expected an"))
        assert exc.line is not None or exc.field is not None or file_level, repr(exc)
        return exc
    assert table is not None
    if isinstance(table, pa.Table):
        assert table.num_rows > 0
    return table


_ROOT = tempfile.TemporaryDirectory(prefix="smda-fuzz-")  # one folder for every example, removed when the run ends


def _write(suffix: str, data: bytes):
    folder = tempfile.mkdtemp(dir=_ROOT.name)
    path = Path(folder) / f"input{suffix}"
    path.write_bytes(data)
    return path


def _jsonl(records: list[dict], garbage: list[bytes]) -> bytes:
    lines = [json.dumps(r, allow_nan=True).encode() for r in records] + garbage
    return b"\n".join(lines)


DEEP = st.integers(1, 3000).map(lambda d: b'{"prompt": ' + b"[" * d + b"]" * d + b', "id": "x"}')
GARBAGE = st.lists(st.one_of(st.binary(max_size=12), DEEP,
                             st.sampled_from([b"", b"  ", b"{", b"[1, 2]", b"null", b'"x"', b"caf\xe9", b"\xff\xfe",
                                              b'{"prompt": NaN}'])),
                   max_size=2)


@FUZZ
@given(records=st.lists(RECORD, max_size=5), garbage=GARBAGE, reader=st.sampled_from(sorted(READERS)),
       array=st.booleans())
def test_any_json_lines_give_rows_or_an_error_naming_file_line_and_field(records, garbage, reader, array):
    data = json.dumps(records, allow_nan=True).encode() if array and not garbage else _jsonl(records, garbage)
    _outcome(READERS[reader], _write(".jsonl", data))


CELL = st.one_of(TEXT, st.sampled_from(["", "true", "FALSE", "yes", "12", "-3.5e2", "007", '"', '""', "a,b", "x\ny",
                                        "harmful_refusal", "1,2"]))


@FUZZ
@given(header=st.lists(st.sampled_from(KEYS), min_size=0, max_size=5), rows=st.lists(st.lists(CELL, max_size=6), max_size=5),
       reader=st.sampled_from(sorted(READERS)), encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]))
def test_any_csv_gives_rows_or_an_error_naming_file_line_and_field(header, rows, reader, encoding):
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in [header, *rows]:
        writer.writerow(row)
    try:
        data = buf.getvalue().encode(encoding)
    except UnicodeEncodeError:
        data = buf.getvalue().encode("utf-8", errors="replace")
    _outcome(READERS[reader], _write(".csv", data))


def _column(draw, n: int) -> pa.Array:
    kind = draw(st.sampled_from(["string", "int", "float", "bool", "binary", "list", "struct", "null", "timestamp",
                                 "large_string", "dictionary"]))
    if kind == "string":
        return pa.array(draw(st.lists(st.none() | TEXT, min_size=n, max_size=n)), pa.string())
    if kind == "large_string":
        return pa.array(draw(st.lists(st.none() | TEXT, min_size=n, max_size=n)), pa.large_string())
    if kind == "int":
        return pa.array(draw(st.lists(st.none() | st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)), pa.int64())
    if kind == "float":
        return pa.array(draw(st.lists(st.none() | st.floats(), min_size=n, max_size=n)), pa.float64())
    if kind == "bool":
        return pa.array(draw(st.lists(st.none() | st.booleans(), min_size=n, max_size=n)), pa.bool_())
    if kind == "binary":
        return pa.array(draw(st.lists(st.none() | st.binary(max_size=6), min_size=n, max_size=n)), pa.binary())
    if kind == "list":
        return pa.array(draw(st.lists(st.none() | st.lists(st.integers(-5, 5), max_size=3), min_size=n, max_size=n)),
                        pa.list_(pa.int64()))
    if kind == "struct":
        return pa.array(draw(st.lists(st.none() | st.fixed_dictionaries({"a": st.integers(0, 3)}), min_size=n, max_size=n)),
                        pa.struct([("a", pa.int64())]))
    if kind == "timestamp":
        return pa.array(draw(st.lists(st.none() | st.integers(0, 10**15), min_size=n, max_size=n)), pa.timestamp("us"))
    if kind == "dictionary":
        return pa.array(draw(st.lists(st.none() | TEXT, min_size=n, max_size=n)), pa.string()).dictionary_encode()
    return pa.nulls(n)


@st.composite
def parquet_tables(draw) -> pa.Table:
    n = draw(st.integers(0, 4))
    names = draw(st.lists(st.sampled_from(KEYS[:-1]), min_size=1, max_size=5, unique=True))
    return pa.table({name: _column(draw, n) for name in names})


@FUZZ
@given(table=parquet_tables(), reader=st.sampled_from(sorted(READERS)), noise=st.none() | st.binary(max_size=40))
def test_any_parquet_gives_rows_or_an_error_naming_file_row_and_field(table, reader, noise):
    if noise is not None:
        data = noise  # not Parquet at all
    else:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
    _outcome(READERS[reader], _write(".parquet", data))


LABEL_ITEM = st.one_of(RECORD, st.fixed_dictionaries({"index": VALUE, "description": VALUE}),
                       st.fixed_dictionaries({"feature": st.integers(-3, 50) | TEXT, "explanation": TEXT}))


@FUZZ
@given(shape=st.sampled_from(["list", "explanations", "mapping", "lines", "scalar", "deep"]),
       items=st.lists(LABEL_ITEM, max_size=4), mapping=st.dictionaries(TEXT | st.sampled_from(["0", "7", "-1"]), VALUE,
                                                                         max_size=3), garbage=GARBAGE)
def test_any_label_export_gives_labels_or_an_error_naming_file_line_and_field(shape, items, mapping, garbage):
    if shape == "list":
        data = json.dumps(items, allow_nan=True).encode()
    elif shape == "explanations":
        data = json.dumps({"explanations": items if items else mapping}, allow_nan=True).encode()
    elif shape == "mapping":
        data = json.dumps(mapping, allow_nan=True).encode()
    elif shape == "lines":
        data = _jsonl(items, garbage)
    elif shape == "deep":
        data = b'{"explanations": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    else:
        data = json.dumps(items[0] if items else 3, allow_nan=True).encode()
    result = _outcome(inputs.read_feature_labels, _write(".json", data))
    if isinstance(result, dict):
        assert all(isinstance(k, int) and k >= 0 and isinstance(v, str) and v for k, v in result.items())


@pytest.mark.parametrize("reader", sorted(READERS))
def test_the_found_cases_stay_fixed(reader, tmp_path):
    """Inputs the fuzzing found (kept as plain examples so they run on every commit)."""
    cases = {
        "nan_prompt.jsonl": b'{"prompt": NaN, "response": "x", "id": "1", "category": "c", "harmful": true}',
        "huge_int.jsonl": b'{"prompt": "p", "response": "r", "id": 123456789012345678901234567890, "category": "c", '
                          b'"harmful": 1, "x": 99999999999999999999999}',
        "list_id.jsonl": b'{"prompt": "p", "response": "r", "id": [1, 2], "pair_id": {"a": 1}, "category": "c", "harmful": 0}',
        "latin1.csv": "prompt,response,id,category,harmful\ncaf\xe9,r,1,c,true\n".encode("latin-1"),
        "deep.jsonl": b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # was a RecursionError
        "deep_array.json": b"[" * 100_000 + b"]" * 100_000,
        "inf.jsonl": b'{"prompt": "p", "response": "r", "id": Infinity, "category": "c", "harmful": true, "refused": -Infinity}',
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _outcome(READERS[reader], path)
    table = pa.table({"prompt": pa.array([b"p"], pa.binary()), "response": ["r"], "id": pa.array([[1]], pa.list_(pa.int64())),
                      "category": ["c"], "harmful": [True]})
    pq.write_table(table, tmp_path / "binary.parquet")
    _outcome(READERS[reader], tmp_path / "binary.parquet")
