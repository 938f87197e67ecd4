"""SFT pair files: prompt and response, every metadata field kept; prompts that are also probes reported."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from smda_core.errors import InputError
from smda_core.inputs.records import PAIR_KINDS, _OVERLAP_SHOWN, _PAIR_COMPUTED, _PAIR_FIELDS, _Record, _boolean, _check_given_hash, _check_unique, _extra_columns, _feature_list, _identifier, _read_records, _reject_reserved, _text, _to_json, content_hash


# --------------------------------------------------------------------------- SFT pairs


def read_sft_pairs(path: str | Path, batch_id: str | None = None) -> pa.Table:
    """Read an SFT pair file (JSONL, CSV or Parquet), keeping every metadata field.

    Required fields: ``prompt`` and ``response`` (non-empty). Optional: ``pair_id``
    (unique; default ``{batch_id}:{row:05d}`` with ``row`` the 0-based row index). Known
    optional fields are checked and normalised: ``harmful`` (boolean), ``category``
    (string), ``kind`` (kept as given, strings trimmed: evaluation metadata that no score
    reads; :data:`PAIR_KINDS` lists the demo's values) and ``intended_features`` (a list of
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
    if "kind" in fields:  # evaluation metadata only: any value is kept (PAIR_KINDS documents the demo's)
        kind = fields["kind"]
        if isinstance(kind, str):
            fields["kind"] = kind.strip()
    if "intended_features" in fields:
        fields["intended_features"] = _feature_list(record, "intended_features", path)


# --------------------------------------------------------------------------- overlap


def pair_rows(pairs: pa.Table) -> list[tuple[str, str, str]]:
    """(pair_id, prompt, response) of each pair, in table order: what the pair steps measure."""
    return list(zip(pairs["pair_id"].to_pylist(), pairs["prompt"].to_pylist(), pairs["response"].to_pylist()))


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


# --------------------------------------------------------------------------- pair ids across batches


def check_pair_ids_unique(pairs: pa.Table, others: pa.Table) -> None:
    """A batch's pair ids must not be those of another active batch: joins by `pair_id` would mix two pairs.

    Args:
        pairs: the batch (pair_id, source_file, line).
        others: the pairs of the other active batches (pair_id, batch_id, source_file, line); batches of
            the same file are left out by the caller (a file's new content supersedes its old batch).

    Raises:
        InputError: naming this pair's file, line and the field, and the file, line and batch of the other.
    """
    if pairs.num_rows == 0 or others.num_rows == 0:
        return
    taken = {}
    for row in others.select(["pair_id", "batch_id", "source_file", "line"]).to_pylist():
        taken.setdefault(row["pair_id"], row)
    for pid, source, line in zip(pairs["pair_id"].to_pylist(), pairs["source_file"].to_pylist(), pairs["line"].to_pylist()):
        other = taken.get(pid)
        if other is not None:
            raise InputError(
                f"pair_id {pid!r} is already used by {other['source_file']} line {other['line']} (batch "
                f"{other['batch_id']}); pair ids must be unique across the active batches, or joins by pair_id mix "
                "two pairs: give one of them another id (or leave pair_id out: the default id names its batch)",
                path=source, line=line, field="pair_id")
