"""Dagster code location of the SMDA warehouse: assets that wire `smda_core` into DuckDB."""
