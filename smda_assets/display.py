"""Tables on the terminal for every `smda` command: one place that escapes cells for Rich.

Policy labels read like `[fraud 30%: how, figure, help]`; Rich would take any bracketed text
as markup and drop it, so every cell and header is printed literally.
"""

from __future__ import annotations

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def print_rows(rows: pa.Table | list[dict], title: str | None = None, *, limit: int = 50, float_format: str = ".4g") -> None:
    """Print up to `limit` rows (an Arrow table or a list of dicts) as a Rich table, cells verbatim."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    if table.num_columns == 0:
        return
    t = Table(title=escape(title) if title else None)
    for name in table.column_names:
        t.add_column(escape(str(name)))
    for row in table.slice(0, limit).to_pylist():
        t.add_row(*[escape(format(v, float_format) if isinstance(v, float) else str(v)) for v in row.values()])
    console.print(t)
    if table.num_rows > limit:
        console.print(f"… {table.num_rows - limit} more rows")
