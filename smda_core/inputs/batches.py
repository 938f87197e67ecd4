"""SFT batches: which files are batches, one batch per distinct content, and which batch is current.

A batch is the content of one SFT file. Its id is the file's stem plus 8 hex of the content's
SHA-256 (:func:`file_batch_id`), so a changed file is a new batch. Content seen before under
another name is a duplicate and adds nothing. When a file's content changes, the batch of its old
content is *superseded* by the batch of its new content: its rows stay in the warehouse for the
record, and the public views leave them out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from smda_core.hashing import file_sha256
from smda_core.inputs.records import _check_file
from smda_core.sources import resolve_sources


@dataclass(frozen=True)
class BatchFile:
    """One SFT file as a batch: its id, where it lies, and the SHA-256 of its bytes."""

    batch_id: str
    path: Path
    content_hash: str


@dataclass(frozen=True)
class Scan:
    """What a look at the SFT files found: distinct batches, and files whose content repeats one."""

    batches: dict[str, BatchFile]
    duplicates: dict[Path, str]  # file → the batch id that already holds its content


def file_hash(path: str | Path) -> str:
    """SHA-256 hex of an SFT file's bytes (the batch's content)."""
    return file_sha256(path)


def batch_stem(path: str | Path) -> str:
    """The file-name part of a batch id: the stem, with characters unsafe in partition keys replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)


def file_batch_id(path: str | Path) -> str:
    """The batch id of an SFT file: its stem plus 8 hex of its content hash (a changed file is a new batch)."""
    p = Path(path)
    _check_file(p)
    return f"{batch_stem(p)}-{file_hash(p)[:8]}"


def scan(files: Iterable[str | Path], known: Iterable[str] = ()) -> Scan:
    """One batch per distinct content, in file-name order.

    Args:
        files: SFT files (explicit ones and the watched folder's).
        known: ids of batches registered before; a file whose content one of them already holds
            (the same 8-hex content hash) is a duplicate: dropping the same content again, under
            any name, adds nothing.
    """
    known_by_hash = {b.rsplit("-", 1)[-1]: b for b in known}
    batches: dict[str, BatchFile] = {}
    duplicates: dict[Path, str] = {}
    seen: dict[str, str] = {}
    for f in sorted({Path(p).resolve() for p in files}):
        digest = file_hash(f)
        if digest in seen:
            duplicates[f] = seen[digest]
            continue
        batch_id = file_batch_id(f)
        earlier = known_by_hash.get(digest[:8])
        if earlier is not None and earlier != batch_id:
            duplicates[f] = earlier
            continue
        seen[digest] = batch_id
        batches[batch_id] = BatchFile(batch_id, f, digest)
    return Scan(batches, duplicates)


def statuses(registry: Iterable[Mapping], current: Mapping[str, str | None]) -> dict[str, tuple[str, str | None]]:
    """Which batch of each source file is current: ``batch_id → (status, superseded_by)``.

    Args:
        registry: rows with batch_id, source_file, content_hash and staged_at.
        current: source file → the SHA-256 of its content now (None if the file is gone).

    The batch whose content is the file's content now is ``active``; if none is (the file was
    removed or holds content not yet staged), the most recently staged one stays active. Every
    other batch of the same file is ``superseded`` by the active one.
    """
    by_file: dict[str, list[Mapping]] = {}
    for row in registry:
        by_file.setdefault(row["source_file"], []).append(row)
    out: dict[str, tuple[str, str | None]] = {}
    for source, rows in by_file.items():
        now = current.get(source)
        matching = [r for r in rows if r["content_hash"] == now]
        pool = matching or rows
        active = max(pool, key=lambda r: (r["staged_at"], r["batch_id"]))
        for r in rows:
            out[r["batch_id"]] = ("active", None) if r is active else ("superseded", active["batch_id"])
    return out


def config_scan(config, known: Iterable[str] = ()) -> Scan:
    """The batches of a config: its SFT files and its watched folder (the demo's by default)."""
    return scan(resolve_sources(config, progress=False).sft, known)


def find_batch(config, batch_id: str) -> BatchFile | None:
    """The file that holds one batch now (None if none does), hashing only the files named like it.

    A partition run needs one batch; hashing every file of a large watched folder for each of
    them would make N new files cost N² reads.
    """
    if "-" not in batch_id:
        return None  # not a batch id this project made
    stem, short_hash = batch_id.rsplit("-", 1)
    for f in sorted({Path(p).resolve() for p in resolve_sources(config, progress=False).sft}):
        if batch_stem(f) == stem:
            digest = file_hash(f)
            if digest[:8] == short_hash:
                return BatchFile(batch_id, f, digest)
    return None
