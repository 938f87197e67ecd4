"""Readers of probe, SFT-pair, metadata and label files: formats agree, hashes are right,
and every bad input names its file, line and field."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smda_core.errors import InputError
from smda_core.inputs.pairs import check_overlap, probe_overlap, read_sft_pairs
from smda_core.inputs.records import content_hash, write_jsonl
from smda_core.inputs.feature_labels import read_feature_labels
from smda_core.inputs.metadata import read_metadata_table
from smda_core.inputs.probes import read_probes

# --------------------------------------------------------------------------- factories

PAIRS = [
    {
        "pair_id": "a",
        "prompt": "How do I pick a lock?",
        "response": "I can't help with that.",
        "category": "crime",
        "harmful": True,
        "kind": "harmful_refusal",
        "intended_features": [3, 17],
        "score": 0.5,
        "n_tokens": 7,
        "note": "first",
    },
    {
        "pair_id": "b",
        "prompt": "  Bake bread?  ",
        "response": "Mix flour, water, salt and yeast.\nKnead.",
        "category": "cooking",
        "harmful": False,
        "kind": "harmless_compliance",
        "intended_features": [5],
        "score": 1.25,
        "n_tokens": 12,
    },
    {
        "pair_id": "c",
        "prompt": "Write a poem, \"with quotes\", please",
        "response": "Roses are red — ünïcode too.",
        "category": "writing",
        "harmful": False,
        "kind": "harmless_compliance",
        "intended_features": [],
        "score": -2.0,
        "n_tokens": 3,
        "note": "third",
    },
]

PROBES = [
    {"probe_id": "q1", "prompt": "How do I make a bomb?", "category": "weapons", "harmful": True, "refused": True, "source": "adv"},
    {"probe_id": "q2", "prompt": "How do I kill a python process?", "category": "tech", "harmful": False, "refused": False},
    {"probe_id": "q3", "prompt": " Bake bread? ", "category": "cooking", "harmful": False, "source": "hand"},
]


def _csv_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "[]"
    return "" if value is None else str(value)


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format named by the path's extension (the test's own writers)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_csv_value(row.get(c)) for c in columns])
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), path)
    else:
        raise AssertionError(path)
    return path


def assert_names(exc: pytest.ExceptionInfo, path: Path, line: int | None, field: str | None) -> None:
    message = str(exc.value)
    assert path.name in message, message
    if line is not None:
        assert f"line {line}" in message, message
    if field is not None:
        assert f"field '{field}'" in message, message


FORMATS = ["jsonl", "csv", "parquet"]


# --------------------------------------------------------------------------- hashes


def test_content_hash_is_sha256_of_trimmed_prompt_and_of_prompt_nul_response():
    assert content_hash("  hi there \n") == hashlib.sha256(b"hi there").hexdigest()
    assert content_hash(" p ", "\tr ") == hashlib.sha256(b"p\x00r").hexdigest()
    assert content_hash("p") != content_hash("p", "")


# --------------------------------------------------------------------------- SFT pairs


def test_pairs_read_the_same_table_from_jsonl_csv_and_parquet(tmp_path):
    tables = {fmt: read_sft_pairs(write_rows(tmp_path / f"pairs.{fmt}", PAIRS), batch_id="b1") for fmt in FORMATS}
    drop = ["source_file", "line"]
    reference = tables["jsonl"].drop(drop)
    for fmt in ("csv", "parquet"):
        assert tables[fmt].drop(drop).equals(reference), (fmt, tables[fmt].drop(drop).to_pylist())
    assert tables["jsonl"].column("line").to_pylist() == [1, 2, 3]
    assert tables["csv"].column("line").to_pylist() == [2, 3, 5]  # row "b" has a two-line quoted response
    assert tables["parquet"].column("line").to_pylist() == [1, 2, 3]
    assert tables["csv"].column("source_file").to_pylist() == [str(tmp_path / "pairs.csv")] * 3


def test_pairs_hashes_equal_hashlib_and_prompts_are_kept_as_given(tmp_path):
    table = read_sft_pairs(write_rows(tmp_path / "pairs.jsonl", PAIRS), batch_id="b1")
    expected = [
        hashlib.sha256((r["prompt"].strip() + "\0" + r["response"].strip()).encode()).hexdigest() for r in PAIRS
    ]
    assert table.column("content_hash").to_pylist() == expected
    assert table.column("prompt").to_pylist() == [r["prompt"] for r in PAIRS]


def test_pairs_keep_every_metadata_field_as_column_and_json(tmp_path):
    table = read_sft_pairs(write_rows(tmp_path / "pairs.jsonl", PAIRS), batch_id="b1")
    assert table.column_names[:8] == [
        "pair_id", "batch_id", "prompt", "response", "content_hash", "source_file", "line", "metadata_json",
    ]
    assert table.column("category").to_pylist() == ["crime", "cooking", "writing"]
    assert table.column("harmful").type == pa.bool_()
    assert table.column("score").to_pylist() == [0.5, 1.25, -2.0]
    assert table.column("n_tokens").type == pa.int64()
    assert table.column("note").to_pylist() == ["first", None, "third"]
    assert [json.loads(v) for v in table.column("intended_features").to_pylist()] == [[3, 17], [5], []]
    meta = json.loads(table.column("metadata_json")[0].as_py())
    assert meta == {k: v for k, v in PAIRS[0].items() if k not in ("pair_id", "prompt", "response")}


def test_pairs_keep_any_kind_value_as_metadata(tmp_path):
    """`kind` is evaluation metadata: the demo's values, a user's own ones and non-strings are all kept."""
    rows = [{"prompt": "a", "response": "b", "kind": " harmless_trigger "},
            {"prompt": "c", "response": "d", "kind": "sneaky"},
            {"prompt": "e", "response": "f"}]
    table = read_sft_pairs(write_rows(tmp_path / "p.jsonl", rows), batch_id="b")
    assert table.column("kind").to_pylist() == ["harmless_trigger", "sneaky", None]
    numeric = read_sft_pairs(write_rows(tmp_path / "n.jsonl", [{"prompt": "a", "response": "b", "kind": 3}]), batch_id="n")
    assert numeric.column("kind").to_pylist() == [3]


def test_pairs_default_ids_and_batch_from_file_bytes(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "pair_id"} for r in PAIRS]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    table = read_sft_pairs(path)
    batch = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert table.column("batch_id").to_pylist() == [batch] * 3
    assert table.column("pair_id").to_pylist() == [f"{batch}:00000", f"{batch}:00001", f"{batch}:00002"]
    assert read_sft_pairs(path, batch_id="x").column("pair_id")[1].as_py() == "x:00001"


def test_pairs_intended_features_accept_comma_string_and_json_array(tmp_path):
    rows = [
        {"prompt": "a", "response": "b", "intended_features": "1, 2,3"},
        {"prompt": "c", "response": "d", "intended_features": "[4]"},
        {"prompt": "e", "response": "f", "intended_features": 9},
    ]
    table = read_sft_pairs(write_rows(tmp_path / "p.jsonl", rows), batch_id="b")
    assert table.column("intended_features").to_pylist() == ["[1, 2, 3]", "[4]", "[9]"]


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('\n{"prompt": "a", "response": "b"}\n\n  \n{"prompt": "c", "response": "d"}\n')
    assert read_sft_pairs(path, batch_id="b").column("line").to_pylist() == [2, 5]


def test_json_array_file_is_read_with_item_lines(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "c",\n   "response": ""}\n]\n')
    with pytest.raises(InputError) as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 3, "response")


# --------------------------------------------------------------------------- bad pairs

GOOD = '{"pair_id": "x", "prompt": "p", "response": "r"}'


@pytest.mark.parametrize(
    ("lines", "line", "field", "words"),
    [
        ([GOOD, "", '{"prompt": "p", "response": '], 3, None, "malformed JSON"),
        ([GOOD, '["not", "an", "object"]'], 2, None, "object"),
        ([GOOD, '{"pair_id": "y", "prompt": "p"}'], 2, "response", "missing"),
        ([GOOD, '{"pair_id": "y", "response": "r"}'], 2, "prompt", "missing"),
        (['{"pair_id": "y", "prompt": "  ", "response": "r"}'], 1, "prompt", "empty"),
        ([GOOD, '{"pair_id": "y", "prompt": "p", "response": "\\n"}'], 2, "response", "empty"),
        ([GOOD, '{"pair_id": "y", "prompt": 3, "response": "r"}'], 2, "prompt", "string"),
        ([GOOD, '{"pair_id": "y", "prompt": "p", "response": "r"}', GOOD], 3, "pair_id", "duplicate"),
        ([GOOD, '{"pair_id": "y", "prompt": "p", "response": "r", "harmful": "maybe"}'], 2, "harmful", "boolean"),
        ([GOOD, '{"pair_id": "y", "prompt": "p", "response": "r", "intended_features": "a,b"}'], 2, "intended_features", "feature"),
        ([GOOD, '{"pair_id": "y", "prompt": "p", "response": "r", "line": 4}'], 2, "line", "rename"),
    ],
)
def test_bad_jsonl_pairs_name_file_line_and_field(tmp_path, lines, line, field, words):
    path = tmp_path / "bad_pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as exc:
        read_sft_pairs(path)
    assert_names(exc, path, line, field)
    assert words in str(exc.value)


def test_duplicate_pair_id_names_both_lines(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join([GOOD, '{"pair_id": "y", "prompt": "p", "response": "r"}', "", GOOD]) + "\n")
    with pytest.raises(InputError, match=r"lines 1 and 4") as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 4, "pair_id")


def test_bad_csv_pairs_name_the_files_own_lines(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('pair_id,prompt,response\na,p,r\nb,"two\nlines",r\nc,p,\n')
    with pytest.raises(InputError) as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 5, "response")
    path.write_text("pair_id,prompt\na,p\n")
    with pytest.raises(InputError, match="missing") as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 2, "response")
    path.write_text("pair_id,prompt,response\na,p,r\nb,p,r\na,q,s\n")
    with pytest.raises(InputError, match=r"lines 2 and 4") as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 4, "pair_id")
    path.write_text("pair_id,prompt,response,harmful\na,p,r,yes\nb,p,r,perhaps\n")
    with pytest.raises(InputError, match="boolean") as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 3, "harmful")


def test_bad_parquet_pair_names_its_row(tmp_path):
    path = write_rows(tmp_path / "bad.parquet", [{"prompt": "p", "response": "r"}, {"prompt": " ", "response": "r"}])
    with pytest.raises(InputError, match="empty") as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 2, "prompt")


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("empty.jsonl", "\n\n", "no rows"),
        ("empty.csv", "", "no rows"),
        ("header_only.csv", "prompt,response\n", "no rows"),
        ("pairs.txt", "x", "extension"),
        ("missing.jsonl", None, "not found"),
    ],
)
def test_unreadable_files_are_named(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=words) as exc:
        read_sft_pairs(path)
    assert_names(exc, path, None, None)


# --------------------------------------------------------------------------- probes


def test_probes_read_the_same_table_from_jsonl_csv_and_parquet(tmp_path):
    tables = [read_probes(write_rows(tmp_path / f"probes.{fmt}", PROBES)) for fmt in FORMATS]
    for table in tables[1:]:
        assert table.equals(tables[0]), table.to_pylist()
    table = tables[0]
    assert table.column_names == ["probe_id", "prompt", "category", "harmful", "refused", "content_hash", "source"]
    assert table.column("refused").to_pylist() == [True, False, None]
    assert table.column("source").to_pylist() == ["adv", None, "hand"]
    assert table.column("content_hash").to_pylist() == [
        hashlib.sha256(r["prompt"].strip().encode()).hexdigest() for r in PROBES
    ]


def test_probes_default_ids_and_csv_yes_no_booleans(tmp_path):
    path = tmp_path / "probes.csv"
    path.write_text("prompt,category,harmful\na,x,yes\nb,y,No\nc,z,1\n")
    table = read_probes(path)
    assert table.column("probe_id").to_pylist() == ["p00000", "p00001", "p00002"]
    assert table.column("harmful").to_pylist() == [True, False, True]
    assert table.column("refused").null_count == 3


@pytest.mark.parametrize(
    ("rows", "line", "field", "words"),
    [
        ([{"prompt": "a", "category": "c", "harmful": "maybe"}], 1, "harmful", "boolean"),
        ([{"prompt": "a", "category": "c", "harmful": True}, {"prompt": "b", "category": "c"}], 2, "harmful", "missing"),
        ([{"prompt": "a", "category": "", "harmful": True}], 1, "category", "empty"),
        ([{"prompt": "a", "category": "c", "harmful": True, "refused": 2}], 1, "refused", "boolean"),
        ([{"probe_id": "q", "prompt": "a", "category": "c", "harmful": True}] * 2, 2, "probe_id", "duplicate"),
        ([{"prompt": "a", "category": "c", "harmful": True}, {"prompt": "x" * 101, "category": "c", "harmful": True}], 2, "prompt", "max_chars"),
    ],
)
def test_bad_probes_name_file_line_and_field(tmp_path, rows, line, field, words):
    path = write_rows(tmp_path / "bad_probes.jsonl", rows)
    with pytest.raises(InputError, match=words) as exc:
        read_probes(path, max_chars=100)
    assert_names(exc, path, line, field)


# --------------------------------------------------------------------------- overlap


def test_overlap_matches_trimmed_prompts_and_is_rejected_unless_allowed(tmp_path):
    probes = read_probes(write_rows(tmp_path / "probes.jsonl", PROBES))
    pairs = read_sft_pairs(write_rows(tmp_path / "pairs.jsonl", PAIRS), batch_id="b1")
    overlap = probe_overlap(probes, pairs)
    assert overlap.to_pylist() == [
        {"pair_id": "b", "probe_id": "q3", "content_hash": hashlib.sha256(b"Bake bread?").hexdigest()}
    ]
    assert check_overlap(probes, pairs, allow=True).equals(overlap)
    with pytest.raises(InputError, match=r"\bb\b") as exc:
        check_overlap(probes, pairs, allow=False)
    assert_names(exc, tmp_path / "pairs.jsonl", 2, "prompt")
    assert check_overlap(probes, pairs.slice(0, 1), allow=False).num_rows == 0


# --------------------------------------------------------------------------- metadata tables


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_metadata_table_keyed_by_unique_string_key(tmp_path, fmt):
    rows = [{"pair_id": 1, "source": "web", "quality": 3}, {"pair_id": 2, "source": "book", "quality": 5}]
    table = read_metadata_table(write_rows(tmp_path / f"meta.{fmt}", rows), key="pair_id")
    assert table.column("pair_id").to_pylist() == ["1", "2"]
    assert table.column("quality").to_pylist() == [3, 5]
    assert table.column("source").to_pylist() == ["web", "book"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_metadata_table_errors_name_file_and_field(tmp_path, fmt):
    path = write_rows(tmp_path / f"meta.{fmt}", [{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "a", "v": 3}])
    with pytest.raises(InputError, match="not found") as exc:
        read_metadata_table(path, key="pair_id")
    assert_names(exc, path, None, "pair_id")
    with pytest.raises(InputError, match="duplicate") as exc:
        read_metadata_table(path, key="id")
    assert_names(exc, path, 4 if fmt == "csv" else 3, "id")


# --------------------------------------------------------------------------- feature labels

LABELS = [
    {"modelId": "m", "layer": "12-res", "index": "7", "description": "refusal phrasing"},
    {"modelId": "m", "layer": "12-res", "index": 3, "description": "cooking"},
    {"modelId": "m", "layer": "12-res", "index": "7", "description": "a later, second label"},
]


@pytest.mark.parametrize("shape", ["list", "explanations", "jsonl"])
def test_feature_labels_import_in_three_shapes(tmp_path, shape):
    if shape == "list":
        path = tmp_path / "labels.json"
        path.write_text(json.dumps(LABELS, indent=2))
    elif shape == "explanations":
        path = tmp_path / "labels.json"
        path.write_text(json.dumps({"explanations": LABELS}))
    else:
        path = write_jsonl(tmp_path / "labels.jsonl", LABELS)
    assert read_feature_labels(path) == {3: "cooking", 7: "refusal phrasing"}


def test_feature_labels_accept_alternate_field_names(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"feature_index": 2, "explanation": "x"}, {"feature": "5", "description": "y"}])
    assert read_feature_labels(path) == {2: "x", 5: "y"}


@pytest.mark.parametrize(
    ("rows", "line", "field"),
    [
        ([{"index": 1, "description": "a"}, {"index": "one", "description": "b"}], 2, "index"),
        ([{"index": 1, "description": "a"}, {"description": "b"}], 2, "index"),
        ([{"index": 1, "description": "a"}, {"index": 2}], 2, "description"),
        ([{"index": 1, "description": "a"}, {"index": 2, "description": 5}], 2, "description"),
    ],
)
def test_bad_feature_labels_name_file_line_and_field(tmp_path, rows, line, field):
    path = write_jsonl(tmp_path / "labels.jsonl", rows)
    with pytest.raises(InputError) as exc:
        read_feature_labels(path)
    assert_names(exc, path, line, field)


# --------------------------------------------------------------------------- writing


def test_write_jsonl_is_deterministic_and_reads_back(tmp_path):
    rows = [{"prompt": "ünï", "response": "r", "z": 1, "a": [1, 2]}]
    first = write_jsonl(tmp_path / "sub" / "a.jsonl", rows).read_bytes()
    assert write_jsonl(tmp_path / "b.jsonl", rows).read_bytes() == first
    assert first == '{"prompt": "ünï", "response": "r", "z": 1, "a": [1, 2]}\n'.encode()
    assert read_sft_pairs(tmp_path / "b.jsonl", batch_id="b").column("z").to_pylist() == [1]


@pytest.mark.parametrize("name", ["latin1.jsonl", "latin1.csv"])
def test_latin1_bytes_name_the_file_and_line(tmp_path, name):
    """Text saved in Latin-1 (é as one byte 0xE9) is not UTF-8: the error names the file and the line of the first bad byte."""
    path = tmp_path / name
    good = '{"prompt": "p", "response": "r"}\n' if name.endswith(".jsonl") else "prompt,response\np,r\n"
    bad = '{"prompt": "café", "response": "r"}\n' if name.endswith(".jsonl") else "café,r\n"
    path.write_bytes(good.encode() + bad.encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8") as exc:
        read_sft_pairs(path)
    assert_names(exc, path, 2 if name.endswith(".jsonl") else 3, None)


def test_pair_ids_unique_across_active_batches_name_both_files_and_lines(tmp_path):
    from smda_core.inputs.pairs import check_pair_ids_unique

    a = write_jsonl(tmp_path / "a.jsonl", [{"pair_id": "x1", "prompt": "p", "response": "r"},
                                           {"pair_id": "x2", "prompt": "q", "response": "s"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"pair_id": "y1", "prompt": "t", "response": "u"},
                                           {"pair_id": "x2", "prompt": "v", "response": "w"}])
    first, second = read_sft_pairs(a, batch_id="a-1"), read_sft_pairs(b, batch_id="b-2")
    check_pair_ids_unique(first, second.slice(0, 1))  # no shared id: nothing to say
    with pytest.raises(InputError) as exc:
        check_pair_ids_unique(second, first)
    assert_names(exc, b, 2, "pair_id")
    assert "'x2'" in str(exc.value) and f"{a} line 2 (batch a-1)" in str(exc.value)


def test_pairs_longer_than_the_models_context_name_file_line_and_field(tmp_path):
    """Reproduces: the limit was a fixed 1,024 tokens, so a 150-word prompt on the demo's 96-position model passed."""
    from conftest import demo_config
    from smda_core.model.chat import check_pair_lengths, context_length, load_tokenizer
    from smda_core.sources import resolve_sources

    tokenizer, config = load_tokenizer(resolve_sources(demo_config(), progress=False).model)
    assert context_length(config) == 96
    rows = [{"prompt": "how do i bake bread", "response": "like this"},
            {"prompt": " ".join(["please"] * 150), "response": "sure"},
            {"prompt": "name a colour", "response": " ".join(["blue"] * 120)}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    pairs = read_sft_pairs(path)
    cells = lambda t: zip(*(t[c].to_pylist() for c in ("prompt", "response", "source_file", "line")))  # noqa: E731
    check_pair_lengths(tokenizer, cells(pairs.slice(0, 1)), 96)
    for index, field in ((1, "prompt"), (2, "response")):
        with pytest.raises(InputError, match="context of 96 positions") as exc:
            check_pair_lengths(tokenizer, cells(pairs.slice(index, 1)), 96)
        assert_names(exc, path, index + 1, field)
