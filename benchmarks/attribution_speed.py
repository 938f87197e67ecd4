"""Seconds per pair and peak memory of the screen, gradient and exact tiers and of dattri's TracIn and TRAK, in one run.

Each (tier, m) runs in its own process (peak RSS is a per-process high-water mark), on the demo world
with `--world-pairs` SFT pairs (default 2,000: its own recipe hash, built once and cached; 0 = the
default world with its pairs repeated up to m, for a machine where no world may be built), for
m = 200 and m = 2,000 pairs. Beside each tier, the floors measured in the same process: a plain
forward pass of the pairs (the screen tier's floor) and a plain forward + backward pass of the pairs
batched as the gradient tier batches them (the floor of any gradient method). The exact tier is timed
on `--exact-pairs` pairs (its cost per pair does not depend on m). Also: the warehouse size of the
tier's tables (written to a temporary DuckDB file), with per-probe shifts for the exact tier's pairs only.

    OPENBLAS_NUM_THREADS=1 nice -n 10 python benchmarks/attribution_speed.py [--world-pairs 2000] [--sizes 200,2000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _world

HERE = Path(__file__).resolve()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(world_pairs: int, projection: int | None):
    from smda_core.config import load_config

    demo = {"cache_dir": str(_world.ROOT / ".cache" / "smda-demo")}
    if world_pairs:
        demo["n_pairs"] = world_pairs
    return load_config(None, demo=demo, gradient={"projection": projection})


def _take(pairs, m: int):
    """The first m pairs; when the world has fewer, its pairs again (ids suffixed), so that m can exceed it."""
    import pyarrow as pa

    if m <= pairs.num_rows:
        return pairs.slice(0, m)
    reps = []
    for r in range(-(-m // pairs.num_rows)):
        t = pairs.set_column(pairs.schema.get_field_index("pair_id"), "pair_id",
                             pa.array([f"{p}#{r}" for p in pairs["pair_id"].to_pylist()]))
        reps.append(t)
    return pa.concat_tables(reps).slice(0, m)


def _floors(rt, pairs, batch: int) -> dict:
    """Plain forward, and forward + backward of the SFT loss, per pair, batched like the gradient tier (float32)."""
    import copy

    import torch

    from smda_core.model.chat import encode_pair
    from smda_core.model.training import sft_batch, sft_loss

    model = copy.deepcopy(rt.model).float().eval()
    enc = sorted((encode_pair(rt.tokenizer, p, r) for p, r in zip(pairs["prompt"].to_pylist(), pairs["response"].to_pylist())),
                 key=lambda e: len(e[0]))
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(enc), batch):
            b = sft_batch(enc[s: s + batch], rt.pad_id)
            model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    fwd = (time.perf_counter() - t0) / len(enc)
    t0 = time.perf_counter()
    for s in range(0, len(enc), batch):
        model.zero_grad(set_to_none=True)
        sft_loss(model, sft_batch(enc[s: s + batch], rt.pad_id)).backward()
    return {"forward": fwd, "forward_backward": (time.perf_counter() - t0) / len(enc)}


def _warehouse_mib(tables: dict) -> float:
    import duckdb

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.duckdb"
        con = duckdb.connect(str(path))
        for name, t in tables.items():
            con.register("t", t)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM t")
            con.unregister("t")
        con.execute("CHECKPOINT")
        con.close()
        return path.stat().st_size / 2 ** 20


def worker(tier: str, m: int, world_pairs: int, projection: int | None, exact_pairs: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from smda_core import api
    from smda_core.attribution.screen import screen_scores

    cfg = _config(world_pairs, projection)
    rt = api.load_runtime(cfg, progress=False)
    probes = api.measure_probes(rt, progress=False)
    policy = api.fit_policy(probes, cfg.policy)
    pairs = _take(api.read_pairs(rt.sources, rt.probes, cfg), m)
    out = {"tier": tier, "m": m, "n_probes": policy.n, "k": policy.k, "projection": projection}
    base = _rss_mib()
    if tier == "floors":
        out.update(_floors(rt, pairs, cfg.gradient.pair_batch))
    elif tier == "screen":
        t0 = time.perf_counter()
        s = api.screen_pairs(rt, policy, pairs)
        screen_scores(policy, s.prompt_X, s.response_refuses)
        out["seconds_per_pair"] = (time.perf_counter() - t0) / m
    elif tier == "gradient":
        from smda_core.store.tables import pair_tables

        t0 = time.perf_counter()
        g, G = api.gradient_shifts(rt, policy, pairs, progress=False)
        total = time.perf_counter() - t0
        out.update(seconds_per_pair=float(g.seconds.mean()), g_seconds=g.meta["g_seconds"], g_mib=g.meta["g_bytes"] / 2 ** 20,
                   total_seconds=total)
        t0 = time.perf_counter()
        attr = api.attribute(policy, probes, g, pairs, cfg)
        out["attribute_seconds"] = time.perf_counter() - t0
        out["warehouse_mib"] = _warehouse_mib(pair_tables("b", g, attr, policy, list(probes.probe_ids), include_shifts=False))
    elif tier == "exact":
        from smda_core.store.tables import pair_tables

        sub = pairs.slice(0, min(m, exact_pairs))
        t0 = time.perf_counter()
        shifts = api.measure_shifts(rt, policy, sub, progress=False)
        out["seconds_per_pair"] = (time.perf_counter() - t0) / sub.num_rows
        out["timed_pairs"] = sub.num_rows
        attr = api.attribute(policy, probes, shifts, sub, cfg)
        mib = _warehouse_mib(pair_tables("b", shifts, attr, policy, list(probes.probe_ids)))
        out["warehouse_mib_per_pair_with_probe_shifts"] = mib / sub.num_rows
        out["result_mib_at_m"] = 2 * m * policy.n * policy.k * 8 / 2 ** 20  # dX_exact + dX_linearised, float64
    elif tier in ("tracin", "trak"):
        from smda_core.experiments.peer import harmful_target, tracin, trak

        rows = list(zip(pairs["prompt"].to_pylist(), pairs["response"].to_pylist()))
        target = [harmful_target(probes.harmful)]  # the peer's single number per pair
        if tier == "tracin":
            _, sec = tracin(rt.model, rt.tokenizer, rows, rt.encoded, target, rt.refusal_openings, lr=cfg.shifts.lr)
        else:
            _, sec = trak(rt.model, rt.tokenizer, rows, rt.encoded, target, rt.refusal_openings)
        out["seconds_per_pair"] = sec
    out["peak_rss_mib"] = _rss_mib()
    out["peak_rss_above_setup_mib"] = _rss_mib() - base
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world-pairs", type=int, default=2000,
                    help="SFT pairs of the demo world (its own recipe, built once); 0 = the default world, its pairs "
                         "repeated up to m")
    ap.add_argument("--sizes", default="200,2000")
    ap.add_argument("--tiers", default="floors,screen,gradient,exact,tracin,trak")
    ap.add_argument("--projection", type=int, default=0, help="gradient.projection (0 = exact gradients)")
    ap.add_argument("--exact-pairs", type=int, default=40, help="pairs the exact tier is timed on")
    ap.add_argument("--peer-max", type=int, default=200, help="largest m the peer runs at")
    ap.add_argument("--worker", nargs=2, metavar=("TIER", "M"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    projection = args.projection or None
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker[0], int(args.worker[1]), args.world_pairs, projection, args.exact_pairs)))
        return
    results = []
    for m in [int(x) for x in args.sizes.split(",")]:
        for tier in args.tiers.split(","):
            if tier in ("tracin", "trak") and m > args.peer_max:
                continue
            cmd = [sys.executable, str(HERE), "--world-pairs", str(args.world_pairs), "--projection", str(args.projection),
                   "--exact-pairs", str(args.exact_pairs), "--worker", tier, str(m)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{tier} m={m} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(line[7:])
            results.append(r)
            print(json.dumps(r), flush=True)
    by = {(r["tier"], r["m"]): r for r in results}
    print("\nm      tier       s/pair    peak RSS above setup (MiB)   ratios")
    for m in sorted({r["m"] for r in results}):
        fl = by.get(("floors", m), {})
        ex = by.get(("exact", m), {}).get("seconds_per_pair")
        for tier in ("screen", "gradient", "exact", "tracin", "trak"):
            r = by.get((tier, m))
            if not r:
                continue
            s = r["seconds_per_pair"]
            ratios = []
            if ex and tier != "exact":
                ratios.append(f"exact/{tier} {ex / s:.1f}x")
            if tier == "screen" and fl:
                ratios.append(f"screen/forward {s / fl['forward']:.2f}")
            if tier in ("gradient", "tracin", "trak") and fl:
                ratios.append(f"{tier}/fwd+bwd {s / fl['forward_backward']:.2f}")
            for peer in ("tracin", "trak"):
                if tier == "gradient" and by.get((peer, m)):
                    ratios.append(f"gradient/{peer} {s / by[(peer, m)]['seconds_per_pair']:.2f}")
            print(f"{m:<6} {tier:<10} {s:.4f}    {r['peak_rss_above_setup_mib']:8.0f}    " + ", ".join(ratios))
        if fl:
            print(f"{m:<6} floors     forward {fl['forward']:.4f}, forward+backward {fl['forward_backward']:.4f}")
        g = by.get(("gradient", m))
        if g:
            print(f"{m:<6} gradient: G once {g['g_seconds']:.1f} s ({g['g_mib']:.0f} MiB), attribution {g['attribute_seconds']:.1f} s, "
                  f"warehouse {g['warehouse_mib']:.1f} MiB")
        e = by.get(("exact", m))
        if e:
            print(f"{m:<6} exact: {e['warehouse_mib_per_pair_with_probe_shifts']:.2f} MiB of warehouse per pair with per-probe "
                  f"shifts; its shifts for all m pairs would hold {e['result_mib_at_m']:.0f} MiB")


if __name__ == "__main__":
    main()
