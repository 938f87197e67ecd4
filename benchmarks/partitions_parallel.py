"""Wall time of 4 SFT batches (partitions) computed one after another versus 4 at once, in one run of this script.

Both sides do the same work on the demo world: 4 batch files of N_PAIRS pairs each, every pair
measured over all 450 probes, then the one writer loads them. "sequential" runs the 4 batches
one after another, each a run of the `sft_batch` job with the multiprocess executor (exactly what
a parallel run does, minus the overlap); "in-process" is the default `smda ingest` path (one
process, no run overhead); "parallel" launches the 4 runs at once (`smda ingest --workers 4`).
The ratio sequential / parallel is the speed-up; on 2 cores it cannot exceed 2.
"""

import json
import tempfile
import time
from pathlib import Path

from _world import ROOT

N_PAIRS = 12
N_BATCHES = 4


def setup(root: Path, pairs: list[dict], probes_path: str) -> tuple[str, str]:
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    for i in range(N_BATCHES):
        rows = pairs[i * N_PAIRS:(i + 1) * N_PAIRS]
        (inbox / f"batch{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "home").mkdir()
    (root / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    config = root / "smda.yaml"
    config.write_text(f"data:\n  probes: {probes_path}\n  sft: []\nwatch:\n  folder: {inbox}\n"
                      f"demo:\n  cache_dir: {ROOT / '.cache' / 'smda-demo'}\nwarehouse: {root / 'wh' / 'warehouse.duckdb'}\n")
    return str(config), str(root / "home")


def main() -> None:
    import os

    import dagster as dg

    from smda_assets.run import _run, observe_inputs, run_batches
    from smda_assets.resources import SMDAResource
    from smda_core.sources import resolve_sources
    from smda_core.inputs.batches import config_scan
    from smda_core.config import load_config

    src = resolve_sources(load_config(None, demo={"cache_dir": str(ROOT / ".cache" / "smda-demo")}), progress=False)
    pairs = [json.loads(line) for line in Path(src.sft[0]).read_text().splitlines()]
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, workers, separate in (("in-process", 1, False), ("sequential", 1, True), ("parallel", N_BATCHES, True)):
            config, home = setup(Path(tmp) / mode, pairs, src.probes)
            os.environ["DAGSTER_HOME"] = home
            instance = dg.DagsterInstance.get()
            resource = SMDAResource(config_path=config)
            observe_inputs(resource, instance)
            batches = sorted(config_scan(resource.config()).batches)
            instance.add_dynamic_partitions("sft_batches", batches)
            _run(resource, instance, ["probes", "features", "behaviour_scores", "policy", "policy_fit", "feature_labels"])
            t0 = time.perf_counter()
            failed = run_batches(batches, resource, instance, workers=workers, separate_runs=separate)
            _run(resource, instance, ["loaded_batches"])
            times[mode] = time.perf_counter() - t0
            assert not failed, failed
            print(f"{mode:>11}: {times[mode]:6.1f} s for {N_BATCHES} batches x {N_PAIRS} pairs", flush=True)
    print(f"speed-up sequential/parallel = {times['sequential'] / times['parallel']:.2f} "
          f"(in-process/parallel = {times['in-process'] / times['parallel']:.2f}; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
