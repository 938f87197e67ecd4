"""One Dagster instance per warehouse: where a warehouse's run memory lives, and the check that an instance
serves one warehouse only.

Dagster remembers in its instance what was materialised (data versions, partitions). Two warehouses on one
instance would take each other's results for their own: the second computes nothing, its views stay empty,
and each one's refit makes the other's batches stale. So

- without DAGSTER_HOME, `smda` keeps each warehouse's runs in its own instance, `<stem>.files/dagster/`
  beside the file (a project folder can hold many warehouses);
- with DAGSTER_HOME (`dg dev` and the daemon need one), that instance is bound to the first warehouse that
  runs on it (:data:`MARKER` in it names the file), and a run for any other warehouse is refused, by
  `smda` before it starts and by the resource when Dagster starts a run, with an error naming both.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from smda_core.errors import SMDAError

MARKER = "smda-warehouse.txt"
"""The file in a shared instance's folder that names the one warehouse it serves."""
DAGSTER_YAML = "# The Dagster instance of one SMDA warehouse (written by smda).\ntelemetry:\n  enabled: false\n"


def own_home(warehouse: Path) -> Path:
    """The warehouse's own instance folder: `<stem>.files/dagster/` beside the DuckDB file."""
    warehouse = Path(warehouse)
    return warehouse.with_name(warehouse.stem + ".files") / "dagster"


def instance_for(warehouse: Path) -> dg.DagsterInstance:
    """The instance that remembers what was computed for `warehouse`: `$DAGSTER_HOME`'s if set (bound to
    this warehouse, or refused), else the warehouse's own (:func:`own_home`), created on first use."""
    shared = os.environ.get("DAGSTER_HOME")
    if shared:
        if not Path(shared).is_dir():
            raise SMDAError(f"DAGSTER_HOME={shared} is not a folder: create it, or unset DAGSTER_HOME to keep this "
                            f"warehouse's runs in {own_home(warehouse)}")
        instance = dg.DagsterInstance.get()
    else:
        home = own_home(warehouse)
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text(DAGSTER_YAML)
        instance = dg.DagsterInstance.from_config(str(home))
    bind(instance, warehouse)
    return instance


def bind(instance: dg.DagsterInstance, warehouse: Path) -> None:
    """Make sure `instance` serves `warehouse` alone: bind an unbound shared instance, refuse a bound one.

    The warehouse's own instance and ephemeral ones need no marker.
    """
    if instance.is_ephemeral or not instance.root_directory:
        return
    root = Path(instance.root_directory).resolve()
    mine = Path(warehouse).resolve()
    if root == own_home(mine).resolve():
        return
    marker = root / MARKER
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f"{MARKER}.{os.getpid()}.tmp")
        tmp.write_text(f"{mine}\n")
        tmp.replace(marker)
        return
    theirs = marker.read_text().strip()
    if theirs != str(mine):
        raise SMDAError(
            f"the Dagster instance in {root} (DAGSTER_HOME) keeps the runs of the warehouse {theirs}, and this "
            f"config's warehouse is {mine}: one instance serves one warehouse, or each takes the other's results "
            f"for its own. Unset DAGSTER_HOME (smda then keeps this warehouse's runs in {own_home(mine)}) or point "
            f"it to a folder of its own; if that warehouse was moved here, delete {marker}")
