"""How long `smda report` takes and how big the file is, on the demo warehouse and on 2,000 pairs.

A real 2,000-pair warehouse costs a world build plus about 0.4 s of shift measurement per pair on
two cores (and more on a busy machine), so the 2,000-pair warehouse is synthesised from a built
demo warehouse: every table with a `pair_id` column (SFT pairs, summary, attribution, mechanism,
group shifts) is copied `ceil(2000 / n)` times with new pair ids and slightly perturbed scores;
`pair_shifts` (per probe and feature, never read by the report) is left as it is. The report's
queries, figures and tables then see 2,000 pairs of realistic shape.

    PYTHONPATH=. .venv/bin/python benchmarks/report_size.py [--warehouse warehouse/warehouse.duckdb] [--pairs 2000]

Prints one line per warehouse: pairs, seconds, megabytes, figures. Budget (issue 17): < 30 s, < 20 MB.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

SKIP = {"pair_shifts"}  # per (pair, probe, feature): millions of rows the report never reads
SCORES = ("score", "alignment", "margin_shift", "local_shift", "worst_group_shift", "correctness_shift",
          "dy_harmful", "dy_harmless")


def synthesise(source: Path, out: Path, n_pairs: int) -> int:
    """Copy `source` to `out` and replicate its pairs until there are at least `n_pairs`; returns the count."""
    import duckdb

    shutil.copy(source, out)
    con = duckdb.connect(str(out))
    try:
        n = con.execute("SELECT count(*) FROM smda.sft_pairs").fetchone()[0]
        copies = math.ceil(n_pairs / n) - 1
        tables = [r[0] for r in con.execute(
            "SELECT DISTINCT table_name FROM duckdb_columns() WHERE schema_name = 'smda' AND column_name = 'pair_id' "
            "AND table_name IN (SELECT table_name FROM duckdb_tables() WHERE schema_name = 'smda')").fetchall()]
        con.execute("BEGIN")
        for table in tables:
            if table in SKIP:
                continue
            cols = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'smda' "
                                    "AND table_name = ?", [table]).fetchall())
            replace = ["pair_id || '~' || k AS pair_id"]
            replace += [f"{c} * (1 + 0.1 * (hash(pair_id || k) % 1000) / 1000.0) AS {c}" for c in SCORES
                        if cols.get(c) in ("DOUBLE", "FLOAT")]
            if "content_hash" in cols:
                replace.append("content_hash || '~' || k AS content_hash")
            con.execute(f"CREATE TEMP TABLE orig AS SELECT * FROM smda.{table}")
            con.execute(f"INSERT INTO smda.{table} SELECT * EXCLUDE (k) REPLACE ({', '.join(replace)}) "
                        f"FROM orig, range(1, {copies + 1}) AS r(k)")
            con.execute("DROP TABLE orig")
        con.execute("COMMIT")
        return con.execute("SELECT count(*) FROM smda.v_pair_summary").fetchone()[0]
    finally:
        con.close()


def measure(warehouse: Path, out: Path) -> tuple[float, float, int]:
    from smda_core.report.html import write_report

    t0 = time.perf_counter()
    written = write_report(warehouse, out)
    return time.perf_counter() - t0, written.n_bytes / 1e6, written.n_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="warehouse/warehouse.duckdb")
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()
    source = Path(args.warehouse)
    if not source.exists():  # a fresh clone: the demo's warehouse first (what `smda demo` builds)
        from smda_assets.run import materialize_all

        materialize_all(None, str(source))
    with tempfile.TemporaryDirectory() as tmp:
        seconds, mb, figs = measure(source, Path(tmp) / "demo.html")
        from smda_core.store.query import query

        n = query(source, "SELECT count(*) AS n FROM smda.v_pair_summary")["n"][0].as_py()
        print(f"demo warehouse: {n} pairs, {seconds:.1f} s, {mb:.1f} MB, {figs} figures")
        big = Path(tmp) / "big.duckdb"
        t0 = time.perf_counter()
        n_big = synthesise(source, big, args.pairs)
        print(f"(synthesised {n_big} pairs from {source} in {time.perf_counter() - t0:.1f} s)")
        seconds, mb, figs = measure(big, Path(tmp) / "big.html")
        print(f"synthesised warehouse: {n_big} pairs, {seconds:.1f} s, {mb:.1f} MB, {figs} figures "
              f"(budget: < 30 s, < 20 MB)")


if __name__ == "__main__":
    main()
