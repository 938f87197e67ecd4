"""Content hashes: the one place that hashes files and folders (batch ids, input versions, staged tables).

A file's SHA-256 is cached by (path, size, mtime): one ingest asks for the same weights' hash
several times, and a large model folder should be read once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex of a file's bytes, read in 1 MiB chunks (cached while size and mtime stay)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def path_hash(path: str | Path) -> str:
    """SHA-256 (16 hex) of a file, or of a folder's files (relative names and contents, in order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        h.update(bytes.fromhex(file_sha256(f)))
    return h.hexdigest()[:16]


def combine(*parts: str) -> str:
    """A short hash (16 hex) of several strings, in order."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def text_sha256(text: str) -> str:
    """SHA-256 hex of UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
