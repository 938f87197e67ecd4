"""The one family of exceptions the core raises; only the CLI turns them into exit codes."""

from __future__ import annotations


class SMDAError(Exception):
    """Base of every error the product raises on purpose (bad input, bad config, bad state)."""


class InputError(SMDAError, ValueError):
    """A user file or value is wrong; the message names the file, line and field where known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class ConfigError(SMDAError, ValueError):
    """The configuration names an unknown key or an invalid value."""


class ModelMismatchError(SMDAError, ValueError):
    """Model, SAE and hook point do not fit together (hidden size, layer index)."""
