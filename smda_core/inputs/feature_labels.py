"""Feature descriptions from a Neuronpedia-style export (JSON or JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


from smda_core.errors import InputError
from smda_core.inputs.records import _INT_RE, _JSON_EXTS, _TOO_DEEP, _check_file, _decode, _json_values, _missing


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
        except RecursionError:
            raise InputError(_TOO_DEEP, path=str(path), line=1) from None
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
