"""Metadata that helps in the Dagster UI: row counts and column schemas of written tables."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa


def table_metadata(table: pa.Table, **extra) -> dict:
    schema = dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in table.schema])
    return {"dagster/row_count": table.num_rows, "dagster/column_schema": schema, **extra}
