"""Per-batch staging: parallel steps write files, one writer loads them into DuckDB.

DuckDB allows one writing process. SFT batches are computed in parallel (one Dagster partition
each), so each batch's steps write their tables as Parquet files into its own folder, and a
manifest (written last, atomically) says the batch is complete. :func:`load_batches` is the
only code that moves staged batches into the warehouse: it loads a batch when its manifest
changed since the last load, replacing that batch's rows in one transaction and touching no
other batch, then marks which batch of each file is current (``batches.statuses``).

    <warehouse dir>/staging/<batch_id>/sft_pairs.parquet   (the pairs, as read and checked)
                                      /source.json         (the file and content hash it came from)
                                      /shifts.npz          (measured shifts, for attribution; no pickle)
                                      /<table>.parquet     (pair_attribution, pair_summary, ...)
                                      /manifest.json       (tables, their SHA-256, the source file)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from smda_core.inputs import batches as batch_rules
from smda_core.errors import InputError, SMDAError
from smda_core.inputs.pairs import check_pair_ids_unique
from smda_core.hashing import file_sha256
from smda_core.model.measurements import GradientShifts, PairShifts
from smda_core.store.arrays import load_arrays, save_arrays
from smda_core.store.warehouse import replace_partition, replace_table

MANIFEST = "manifest.json"
SHIFTS_VERSION = 2  # 2: the pair's response type and its prompt's SAE features


@dataclass(frozen=True)
class Stage:
    """The staging folder of one warehouse."""

    root: Path

    def folder(self, batch_id: str) -> Path:
        return self.root / batch_id

    def write_table(self, batch_id: str, name: str, table: pa.Table) -> Path:
        """Write one table of a batch atomically (a crash leaves the previous file or none)."""
        path = self.folder(batch_id) / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return path

    def read_table(self, batch_id: str, name: str) -> pa.Table:
        path = self.folder(batch_id) / f"{name}.parquet"
        if not path.exists():
            raise SMDAError(f"batch {batch_id}: {path} is missing; materialise the batch's upstream step first")
        return pq.read_table(path)

    def save_json(self, batch_id: str, name: str, value: dict) -> None:
        """A small record of the batch (where its file came from), as JSON, atomically."""
        path = self.folder(batch_id) / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(value, sort_keys=True))
        tmp.replace(path)

    def load_json(self, batch_id: str, name: str) -> dict:
        path = self.folder(batch_id) / f"{name}.json"
        if not path.exists():
            raise SMDAError(f"batch {batch_id}: {path} is missing; materialise the batch's upstream step first")
        return json.loads(path.read_text())

    def save_shifts(self, batch_id: str, shifts: PairShifts) -> Path:
        """The batch's measured shifts as NPZ (no pickle), for the attribution step."""
        arrays, meta = shifts.as_arrays()
        return save_arrays(self.folder(batch_id) / "shifts.npz", arrays, schema="pair_shifts", version=SHIFTS_VERSION,
                           meta=meta)

    def load_shifts(self, batch_id: str) -> PairShifts:
        arrays, meta = load_arrays(self.folder(batch_id) / "shifts.npz", schema="pair_shifts", version=SHIFTS_VERSION)
        return PairShifts.from_arrays(arrays, meta)

    def save_tier(self, batch_id: str, shifts: GradientShifts) -> Path:
        """The cheaper tier's shifts (gradient, or screen with no shifts) as NPZ (no pickle): `tier.npz`."""
        arrays, meta = shifts.as_arrays()
        return save_arrays(self.folder(batch_id) / "tier.npz", arrays, schema="tier_shifts", version=1, meta=meta)

    def load_tier(self, batch_id: str) -> GradientShifts:
        arrays, meta = load_arrays(self.folder(batch_id) / "tier.npz", schema="tier_shifts", version=1)
        return GradientShifts.from_arrays(arrays, meta)

    def remove(self, batch_id: str, name: str) -> None:
        """Drop a staged file that the current settings no longer produce (a tier's shifts)."""
        (self.folder(batch_id) / name).unlink(missing_ok=True)

    def commit(self, batch_id: str, tables: list[str], *, source_file: str, content_hash: str, n_pairs: int,
               policy_version: str | None = None) -> dict:
        """Write the manifest last: the batch's staged tables are complete and consistent, computed against
        the policy `policy_version`."""
        folder = self.folder(batch_id)
        entries = {name: {"file": f"{name}.parquet", "sha256": file_sha256(folder / f"{name}.parquet")} for name in tables}
        stage_id = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
        manifest = {"batch_id": batch_id, "source_file": source_file, "content_hash": content_hash, "n_pairs": n_pairs,
                    "tables": entries, "stage_id": stage_id, "staged_at": datetime.now(timezone.utc).isoformat(),
                    "policy_version": policy_version}
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(folder / MANIFEST)
        return manifest

    def manifest(self, batch_id: str) -> dict | None:
        path = self.folder(batch_id) / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def has(self, batch_id: str, name: str) -> bool:
        """Whether a batch's staged file `name` (e.g. ``sft_pairs.parquet``, ``shifts.npz``) exists."""
        return (self.folder(batch_id) / name).exists()



@dataclass(frozen=True)
class LoadReport:
    loaded: list[str]
    unchanged: list[str]
    not_staged: list[str]
    superseded: list[str]
    refused: dict[str, str] = field(default_factory=dict)  # batch → why it was not loaded (a pair id of another batch)


_ACTIVE_PAIRS = ("SELECT p.pair_id, p.batch_id, p.source_file, p.line FROM smda.sft_pairs AS p "
                 "JOIN smda.sft_batches AS b USING (batch_id) WHERE b.status = 'active' AND b.batch_id <> ? "
                 "AND b.source_file <> ?")


def active_pairs_elsewhere(con: duckdb.DuckDBPyConnection, batch_id: str, source_file: str) -> pa.Table:
    """pair_id, batch_id, source_file, line of the loaded active batches other than `batch_id` and its file's."""
    return con.sql(_ACTIVE_PAIRS, params=[batch_id, str(source_file)]).to_arrow_table()


def pairs_elsewhere(con: duckdb.DuckDBPyConnection | None, stage: Stage, batch_ids, batch_id: str,
                    source_file: str) -> pa.Table:
    """The pairs a new batch's ids must not repeat: those of the loaded active batches (`con`; None before the
    warehouse exists) and of the staged batches among `batch_ids` not loaded yet, leaving out `batch_id` itself
    and the batches of its own file (a file's new content supersedes its old batch)."""
    tables = [active_pairs_elsewhere(con, batch_id, source_file)] if con is not None else []
    loaded = set(_registry(con)) if con is not None else set()
    for other in sorted(set(batch_ids) - loaded - {batch_id}):
        if stage.has(other, "sft_pairs.parquet"):
            t = stage.read_table(other, "sft_pairs").select(["pair_id", "batch_id", "source_file", "line"])
            if t.num_rows and t["source_file"][0].as_py() != str(source_file):
                tables.append(t)
    if not tables:
        return pa.table({"pair_id": pa.array([], pa.string()), "batch_id": pa.array([], pa.string()),
                         "source_file": pa.array([], pa.string()), "line": pa.array([], pa.int64())})
    return pa.concat_tables([t.cast(tables[0].schema) for t in tables])


def _registry(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    rows = con.sql("SELECT * FROM smda.sft_batches").to_arrow_table().to_pylist()
    return {r["batch_id"]: r for r in rows}


def load_batches(con: duckdb.DuckDBPyConnection, stage: Stage, batch_ids: list[str]) -> LoadReport:
    """Load every listed batch whose staged manifest differs from the one loaded last, then mark statuses.

    Each batch is replaced in one transaction across all its tables; other batches' rows are
    not rewritten. Batches without a manifest (never completed) are skipped and reported.
    """
    registry = _registry(con)
    loaded, unchanged, not_staged, refused = [], [], [], {}
    for batch_id in sorted(batch_ids):
        manifest = stage.manifest(batch_id)
        if manifest is None:
            not_staged.append(batch_id)
            continue
        if registry.get(batch_id, {}).get("stage_id") == manifest["stage_id"]:
            unchanged.append(batch_id)
            continue
        tables = {name: stage.read_table(batch_id, name) for name in manifest["tables"]}
        if "sft_pairs" in tables:  # the one writer's check: parallel runs each saw the other's pairs not yet loaded
            try:
                check_pair_ids_unique(tables["sft_pairs"], active_pairs_elsewhere(con, batch_id, manifest["source_file"]))
            except InputError as exc:
                refused[batch_id] = str(exc)
                continue
        con.begin()
        try:
            for name, table in tables.items():
                replace_partition(con, name, "batch_id", batch_id, table, transaction=False)
            row = {"batch_id": batch_id, "source_file": manifest["source_file"], "content_hash": manifest["content_hash"],
                   "n_pairs": int(manifest["n_pairs"]), "stage_id": manifest["stage_id"],
                   "staged_at": datetime.fromisoformat(manifest["staged_at"]).replace(tzinfo=None),
                   "loaded_at": datetime.now(timezone.utc).replace(tzinfo=None), "status": "active", "superseded_by": None,
                   "policy_version": manifest.get("policy_version")}
            replace_partition(con, "sft_batches", "batch_id", batch_id, pa.Table.from_pylist([row]), transaction=False)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        loaded.append(batch_id)
    superseded = mark_statuses(con)
    return LoadReport(loaded, unchanged, not_staged, superseded, refused)


def mark_statuses(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Recompute active / superseded for every registered batch from the source files' content now."""
    registry = list(_registry(con).values())
    if not registry:
        return []
    current = {}
    for source in {r["source_file"] for r in registry}:
        current[source] = batch_rules.file_hash(source) if Path(source).is_file() else None
    status = batch_rules.statuses(registry, current)
    for r in registry:
        r["status"], r["superseded_by"] = status[r["batch_id"]]
    replace_table(con, "sft_batches", pa.Table.from_pylist(registry))
    return sorted(b for b, (s, _) in status.items() if s == "superseded")
