"""What a warehouse holds: the versions its probe readout and policy were written with, and per SFT batch the
policy its loaded pair rows and its staged files were computed against.

Dagster's instance remembers what was materialised; the warehouse file (and its staging folder) is what
users read. The two can part: another warehouse's runs on a shared instance, a replaced or deleted file, a
crash between a policy refit and the batches recomputed for it. `smda stale` and `smda ingest` hold the
instance's memory against this, so what the warehouse lacks is recomputed, and the batches whose rows wait
for the current policy (out of the pair views until then) are named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from smda_core.store.staging import Stage


@dataclass(frozen=True)
class HeldBatch:
    """One SFT batch as the warehouse and its staging folder hold it (None: not there)."""

    status: str | None = None  # active / superseded once loaded
    policy_version: str | None = None  # the policy its loaded pair rows were computed against
    stage_id: str | None = None  # the staged files last loaded
    staged_stage_id: str | None = None  # the complete staged files now (manifest)
    staged_policy_version: str | None = None  # … and the policy they were computed against
    staged_pairs: bool = False  # sft_pairs.parquet (read and checked)
    shifts_policy_version: str | None = None  # staged shifts.npz, and the policy they were measured against

    @property
    def loaded(self) -> bool:
        return self.status is not None


@dataclass(frozen=True)
class WarehouseState:
    """The warehouse's own record of what it holds (see the module docstring)."""

    exists: bool = False
    readout_version: str | None = None
    policy_version: str | None = None
    batches: dict[str, HeldBatch] = field(default_factory=dict)

    def batch(self, batch_id: str) -> HeldBatch:
        return self.batches.get(batch_id, HeldBatch())

    def attributed(self, batch_id: str, policy_version: str) -> bool:
        """Its pair rows against `policy_version` are loaded, or staged complete for the loader."""
        b = self.batch(batch_id)
        return policy_version is not None and policy_version in (b.policy_version if b.loaded else None,
                                                                  b.staged_policy_version)

    def waiting(self) -> list[str]:
        """Active batches whose loaded pair rows were computed against another policy than the warehouse's:
        the pair views leave them out until they are recomputed and loaded."""
        return sorted(b for b, h in self.batches.items()
                      if h.status == "active" and h.policy_version != self.policy_version)

    def unloaded(self) -> list[str]:
        """Batches whose complete staged files are not the ones the warehouse loaded last."""
        return sorted(b for b, h in self.batches.items() if h.staged_stage_id and h.staged_stage_id != h.stage_id)


def warehouse_state(path: str | Path, stage: Stage, batch_ids: Iterable[str] = ()) -> WarehouseState:
    """Read what the warehouse at `path` and its staging folder hold (for `batch_ids` and every loaded batch)."""
    from smda_core.store.query import reading

    path = Path(path)
    if not path.exists():
        return WarehouseState(batches={b: _staged(stage, b, HeldBatch()) for b in batch_ids})
    with reading(path) as con:
        def rows(table: str) -> list[dict]:
            return con.sql(f"SELECT * FROM smda.{table}").to_arrow_table().to_pylist() if table in tables else []

        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'smda'").fetchall()}
        readout = (rows("readout_info") or [{}])[0].get("readout_version")
        policy = (rows("policy_fit") or [{}])[0].get("policy_version")
        loaded = {r["batch_id"]: HeldBatch(status=r.get("status"), policy_version=r.get("policy_version"),
                                           stage_id=r.get("stage_id")) for r in rows("sft_batches")}
    batches = {b: _staged(stage, b, loaded.get(b, HeldBatch())) for b in {*batch_ids, *loaded}}
    return WarehouseState(True, readout, policy, batches)


def _staged(stage: Stage, batch_id: str, held: HeldBatch) -> HeldBatch:
    from dataclasses import replace

    manifest = stage.manifest(batch_id) or {}
    shifts = stage.load_json(batch_id, "shifts_policy") if stage.has(batch_id, "shifts_policy.json") else {}
    return replace(held, staged_stage_id=manifest.get("stage_id"), staged_policy_version=manifest.get("policy_version"),
                   staged_pairs=stage.has(batch_id, "sft_pairs.parquet"),
                   shifts_policy_version=shifts.get("policy_version") if stage.has(batch_id, "shifts.npz") else None)
