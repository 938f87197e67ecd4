"""One resource: the validated config, the warehouse file, its staged batches and figures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg


class SMDAResource(dg.ConfigurableResource):
    """Where the config lives (None = `$SMDA_CONFIG`, else the embedded demo) and an optional warehouse override."""

    config_path: str | None = None
    warehouse_path: str | None = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Every run checks that its instance serves this warehouse (smda_assets.instance): a daemon on a
        DAGSTER_HOME bound to another warehouse fails at once instead of mixing the two."""
        from smda_assets.instance import bind

        if context.instance is not None:
            bind(context.instance, self.warehouse)

    def config(self):
        from smda_core.config import load_config

        return load_config(self.config_path or os.environ.get("SMDA_CONFIG") or None)

    @property
    def warehouse(self) -> Path:
        return Path(self.warehouse_path or os.environ.get("SMDA_WAREHOUSE") or self.config().warehouse)

    @property
    def files(self) -> Path:
        """This warehouse's own folder beside it, `<stem>.files/`: artefacts, staged batches, plots.

        Keyed by the file, not the directory, so two warehouses in one folder (the demo's and a
        real model's) never read each other's policy or batches.
        """
        return self.warehouse.with_name(self.warehouse.stem + ".files")

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A writing connection, holding the warehouse lock while open (parallel steps take turns).

        Tables and views exist from the first write on, and views added by a newer version reach
        an older warehouse (views read tables only; cheap)."""
        from smda_core.store.warehouse import apply_views, ensure_schema, session

        with session(self.warehouse) as con:
            ensure_schema(con)
            apply_views(con)
            yield con

    def write(self, tables: dict, *, partition: str | None = None, key: str = "batch_id") -> None:
        """Replace whole tables, or the rows of one partition (`key` = partition), all in one transaction: a
        reader or a crash never sees a new policy_features beside an old policy_fit."""
        from smda_core.store.warehouse import replace_partition, replace_table

        with self.connect() as con:
            con.begin()
            try:
                for name, table in tables.items():
                    if partition is None:
                        replace_table(con, name, table, transaction=False)
                    else:
                        replace_partition(con, name, key, partition, table, transaction=False)
                con.commit()
            except BaseException:
                con.rollback()
                raise

    @property
    def stage(self):
        """Per-batch staging folder: partitions write files here; one loader moves them into DuckDB."""
        from smda_core.store.staging import Stage

        return Stage(self.files / "staging")

    def pairs_elsewhere(self, batch_id: str, source_file: str, batch_ids):
        """The pairs of the other active batches (loaded, or staged and not loaded yet) that a batch's ids must not repeat."""
        from smda_core.store.staging import pairs_elsewhere
        from smda_core.store.warehouse import session

        if not self.warehouse.exists():
            return pairs_elsewhere(None, self.stage, batch_ids, batch_id, source_file)
        with session(self.warehouse, read_only=True) as con:
            return pairs_elsewhere(con, self.stage, batch_ids, batch_id, source_file)

    @property
    def plots(self) -> Path:
        """Where the `plots` asset and `smda plot` write the figures of this warehouse's views."""
        return self.files / "plots"

    @property
    def report(self) -> Path:
        """Where the `report` asset writes this warehouse's HTML report (`smda report` by default too)."""
        return self.files / "report.html"

    def readout(self):
        """The stored probe readout (`ProbeScores`, probes table, readout info), read back from DuckDB."""
        from smda_core.store.tables import read_probe_readout
        from smda_core.store.warehouse import session

        with session(self.warehouse, read_only=True) as con:
            return read_probe_readout(con)

    def runtime(self):
        """The config's model runtime for an experiment on this warehouse's pairs, refused (ConfigError, before the
        model loads) when the warehouse's probes were read with another model or SAE than the config names."""
        from smda_core.preflight import check_same_world
        from smda_core.runtime import load_runtime
        from smda_core.sources import resolve_sources
        from smda_core.store.warehouse import session

        cfg = self.config()
        sources = resolve_sources(cfg, progress=False)
        stored = []
        if self.warehouse.exists():
            with session(self.warehouse, read_only=True) as con:
                if con.sql("SELECT 1 FROM information_schema.tables WHERE table_schema = 'smda' "
                           "AND table_name = 'readout_info'").fetchall():
                    stored = con.sql("SELECT * FROM smda.readout_info").to_arrow_table().to_pylist()
        check_same_world(stored[0] if stored else None, sources.model_name, sources.sae_name, warehouse=self.warehouse)
        return load_runtime(cfg, sources=sources, progress=False)

    def policy(self, scores=None):
        """The policy of the stored readout, refitted (milliseconds, deterministic), checked against the stored one.

        Nothing fitted is stored as an object: anyone who can write the warehouse folder could
        otherwise make the next step run code (a pickle).
        """
        return self.stored_policy(scores)[0]

    def stored_policy(self, scores=None):
        """:meth:`policy` and the version the warehouse records for it (read together: the pair rows carry it)."""
        from smda_core.policy.fit import fit_policy
        from smda_core.store.tables import check_stored_policy, stored_policy_version
        from smda_core.store.warehouse import session

        scores = scores if scores is not None else self.readout()[0]
        policy = fit_policy(scores, self.config().policy)
        with session(self.warehouse, read_only=True) as con:
            check_stored_policy(con, policy)
            version = stored_policy_version(con)
        return policy, version
