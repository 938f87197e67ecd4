"""The `smda` command: thin typer commands over smda_core and the Dagster materialisation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

from smda_assets.display import console, print_rows
from smda_core.errors import SMDAError


class _Commands(TyperGroup):
    """The one place where the product's errors become a one-line message and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SMDAError as exc:
            console.print(f"[bold red]error:[/] {escape(' '.join(str(exc).split()))}", soft_wrap=True)  # one line, verbatim
            raise typer.Exit(code=1) from None


app = typer.Typer(cls=_Commands, help="Symbolic Mechanistic Data Attribution warehouse.", no_args_is_help=True)
_options = {"verbose": False}


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show Dagster's own log (every event); "
                                                "by default smda prints only its own one-line messages")] = False) -> None:
    """Symbolic Mechanistic Data Attribution warehouse."""
    _options["verbose"] = verbose


ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="smda.yaml (default: the embedded demo)")]
WarehouseOpt = Annotated[str | None, typer.Option("--warehouse", help="DuckDB file (default: from the config)")]

EXAMPLE_QUERIES = {
    "Category gaps (lowest refusal among harmful categories first)":
        "SELECT category, harmful, n, round(mean_refusal_prob, 3) AS refusal, round(refusal_gap, 3) AS gap "
        "FROM smda.v_category_gaps ORDER BY harmful DESC, mean_refusal_prob LIMIT 6",
    "Pairs to drop first (lowest recommended score), with the paper's alignment beside it and their metadata":
        "SELECT s.pair_id, p.kind, p.category, round(s.score * 1e3, 3) AS score_e3, round(s.alignment * 1e3, 3) AS alignment_e3, "
        "s.harm_feature FROM smda.v_pair_summary s JOIN smda.v_sft_pairs p USING (pair_id) ORDER BY s.score LIMIT 8",
    "Top policy features": "SELECT feature_id, rank, round(coef, 3) AS coef, label FROM smda.v_policy ORDER BY rank LIMIT 5",
}


def _checked(config: str | None, warehouse: str | None):
    """The resource of a config that passed every check (smda_core.preflight), before a model loads."""
    from smda_assets.resources import SMDAResource
    from smda_core.preflight import check_config

    resource = SMDAResource(config_path=config, warehouse_path=warehouse)
    check_config(resource.config(), source=config or "config")
    return resource


def _warehouse(config: str | None, warehouse: str | None) -> Path:
    from smda_core.config import load_config

    return Path(warehouse or load_config(config).warehouse)


@app.command()
def demo(config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Build the demo world if not cached, materialise every asset, show the policy and example queries.

    `--config` takes another recipe (a `demo:` section, any other setting) without leaving the demo."""
    _materialize(config, warehouse)
    path = _warehouse(config, warehouse)
    _show_policy(path)
    from smda_core.store.query import query

    print_rows(query(path, "SELECT pair_id, dominant_feature, dominant_label, round(interference, 3) AS interference "
                             "FROM smda.v_interference ORDER BY interference DESC LIMIT 5"), "Five most interfering pairs")
    for title, sql in EXAMPLE_QUERIES.items():
        console.print(f"[bold]{title}[/]\n[dim]{sql}[/]")
        print_rows(query(path, sql))
    from smda_assets.resources import SMDAResource

    resource = SMDAResource(warehouse_path=str(path))
    console.print(f"figures (policy, categories, pathways, interference): {resource.plots}/*.png")
    console.print(f"report (open it in a browser, or send it): {resource.report}")


def _materialize(config: str | None, warehouse: str | None) -> None:
    from smda_assets.run import ingest as run_ingest

    report = run_ingest(config, warehouse, everything=True, verbose=_options["verbose"],
                        progress=lambda msg: console.print(f"[dim]·[/] {msg}"))
    _print_outcome(report)
    if report.failed or report.load_error:
        raise SMDAError("; ".join([f"batch {b}: {e}" for b, e in report.failed.items()]
                                  + ([report.load_error] if report.load_error else [])))
    console.print(f"[green]materialised[/] probes, policy, {len(report.batches)} SFT batch(es) and the views")


def _print_outcome(report) -> None:
    """What an ingest leaves the user to know: failed batches, warnings, batches out of the pair views."""
    for batch, error in report.failed.items():
        console.print(f"[bold red]batch {batch} failed:[/] {escape(' '.join(error.split()))}", soft_wrap=True)
    if report.load_error:
        console.print(f"[bold red]loading failed:[/] {escape(' '.join(report.load_error.split()))}", soft_wrap=True)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(' '.join(warning.split()))}", soft_wrap=True)
    if report.waiting:
        console.print(f"[yellow]waiting for the current policy[/] (out of the pair views until recomputed): "
                      f"{', '.join(report.waiting)}", soft_wrap=True)


@app.command()
def materialize(config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Materialise every asset for a config (one-shot, no daemon)."""
    _materialize(config, warehouse)


@app.command()
def ingest(config: ConfigOpt = None, warehouse: WarehouseOpt = None,
           workers: Annotated[int, typer.Option(help="batches computed at once, each its own run (multiprocess executor)")] = 1,
           everything: Annotated[bool, typer.Option(help="recompute every batch, not only new or stale ones")] = False) -> None:
    """One-shot refresh without a daemon: new SFT files in the watched folder and stale results (changed model, SAE, probes, settings)."""
    from smda_assets.run import ingest as run_ingest

    report = run_ingest(config, warehouse, workers=workers, everything=everything, verbose=_options["verbose"],
                        progress=lambda msg: console.print(f"[dim]·[/] {msg}"))
    for path, batch in report.duplicates.items():
        console.print(f"[yellow]duplicate[/] {path}: same content as batch {batch}; not added again")
    console.print(f"batches: {len(report.batches)} ({len(report.added)} new); probe side refitted: {report.probe_side}; "
                  f"computed: {', '.join(b for b in report.ran if b not in report.failed) or 'none'}")
    _print_outcome(report)
    if report.retired:
        console.print(f"retired superseded partitions (rows kept on record): {', '.join(report.retired)}")
    from smda_core.store.query import query

    print_rows(query(_warehouse(config, warehouse), "SELECT batch_id, source_file, n_pairs, status, superseded_by "
                                                      "FROM smda.v_sft_batches"), "SFT batches")
    if report.failed or report.load_error:
        raise typer.Exit(code=1)


@app.command()
def stale(config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """What is stale or missing after the inputs changed (recorded data versions against the inputs' content
    hashes now); `smda ingest` recomputes it."""
    from smda_assets.definitions import defs
    from smda_assets.run import default_instance
    from smda_assets.resources import SMDAResource
    from smda_assets.staleness import stale_report
    from smda_core.preflight import check_config

    resource = SMDAResource(config_path=config, warehouse_path=warehouse)
    check_config(resource.config(), source=config or "config")
    report = stale_report(defs, default_instance(resource), smda=resource)
    rows = [{"asset": k[0], "partition": k[1] or "", "status": v, "because": "; ".join(report.causes.get(k, []))[:120]}
            for k, v in sorted(report.status.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")) if v != "fresh"]
    if report.waiting:
        console.print(f"[yellow]waiting for the current policy[/] (out of the pair views until recomputed; "
                      f"smda ingest does): {', '.join(report.waiting)}", soft_wrap=True)
    if not rows:
        console.print("[green]everything is fresh[/]")
        return
    import pyarrow as pa

    print_rows(pa.Table.from_pylist(rows), "Stale or missing", limit=200)


metadata_app = typer.Typer(help="Your dataset tables, joined to the pair views by pair_id or content hash.", no_args_is_help=True)
app.add_typer(metadata_app, name="metadata")


@metadata_app.command("add")
def metadata_add(file: Annotated[Path, typer.Argument(help="CSV, Parquet or JSONL table")],
                 key: Annotated[str, typer.Option("--key", help="its unique key column")],
                 on: Annotated[str, typer.Option(help="what the key matches: pair_id, content_hash or auto")] = "auto",
                 name: Annotated[str | None, typer.Option(help="table name (default: the file's stem)")] = None,
                 config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Load a metadata table as smda.meta_<name> and create smda.v_pair_summary_<name> (v_pair_summary joined to it)."""
    from smda_core.store.metadata import load_metadata
    from smda_core.store.warehouse import apply_views, session

    with session(_warehouse(config, warehouse)) as con:
        apply_views(con)
        loaded = load_metadata(con, file, key, on=on, name=name)
    console.print(f"[green]loaded[/] {loaded.n_rows} rows into {loaded.table}; {loaded.matched} pairs matched on {loaded.on}; "
                  f"view {loaded.view}")
    console.print(f"[dim]e.g. smda query \"SELECT * FROM {loaded.view} LIMIT 5\"[/]")


@app.command("query")
def query_cmd(sql: str, config: ConfigOpt = None, warehouse: WarehouseOpt = None,
              format: Annotated[str, typer.Option("--format", help="table|csv|json|parquet")] = "table",
              out: Annotated[Path | None, typer.Option("--out", help="file to write (csv/json/parquet)")] = None) -> None:
    """Run SQL on a read-only connection to the warehouse."""
    from smda_core.store.query import query

    if format not in ("table", "csv", "json", "parquet"):
        raise SMDAError(f"--format {format}: use table, csv, json or parquet")
    if format == "parquet" and out is None:
        raise SMDAError("--format parquet needs --out FILE")
    table = query(_warehouse(config, warehouse), sql)
    if format == "table":
        print_rows(table)
        return
    import io
    import json

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if format == "parquet":
        pq.write_table(table, out)
    elif format == "csv":
        from smda_core.store.query import flat_columns

        buf = io.BytesIO()
        pacsv.write_csv(flat_columns(table), buf)  # LIST / STRUCT / MAP cells as JSON text
        text = buf.getvalue().decode()
        out.write_text(text) if out else typer.echo(text, nl=False)
    else:
        text = json.dumps(table.to_pylist(), default=str, indent=1)
        out.write_text(text) if out else typer.echo(text)


def _show_policy(path: Path) -> None:
    from smda_core.store.query import query

    fit = query(path, "SELECT * FROM smda.v_policy_fit").to_pylist()
    if not fit:
        raise SMDAError(f"{path}: no policy fitted yet; run `smda materialize`")
    f = fit[0]
    console.print(f"[bold]{escape(f['formula'])}[/]")  # labels are [bracketed]: not Rich markup
    console.print(f"λ={f['lambda']:.4g}  R²={f['r2']:.3f}  LOO R²={f['loo_r2']:.3f}  held-out accuracy={f['accuracy']:.3f} "
                  f"(majority baseline {f['majority_baseline']:.3f})  n={f['n_probes']} k={f['k']}  preset={f['preset']}  "
                  f"{f['hook']} @ {f['position']}")
    for warning in (f.get("warnings") or "").splitlines():
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


@app.command()
def policy(config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """The policy formula and its fit report."""
    _show_policy(_warehouse(config, warehouse))


@app.command()
def fit(config: ConfigOpt = None,
        preset: Annotated[str | None, typer.Option(help="override the config's preset: default or paper")] = None) -> None:
    """Fit the policy directly (no warehouse) and print the formula and fit report; compares presets quickly."""
    from smda_core.api import feature_labels, fit_policy, formula, load_runtime, measure_probes
    from smda_core.config import load_config
    from smda_core.preflight import check_config

    cfg = load_config(config, **({"preset": preset} if preset else {}))
    check_config(cfg, source=config or "config")
    runtime = load_runtime(cfg)
    policy = fit_policy(measure_probes(runtime, maxima=False), cfg.policy)
    labels = feature_labels(policy, runtime.probes, cfg.policy.labels_path)
    console.print(f"[bold]{escape(formula(policy, labels, cfg.behaviour.kind))}[/]")
    console.print(f"preset={cfg.preset}  λ={policy.lam:.4g}  R²={policy.r2:.3f}  LOO R²={policy.loo_r2:.3f}  "
                  f"held-out accuracy={policy.accuracy:.3f}  majority baseline={policy.majority_baseline:.3f}  "
                  f"n={policy.n} k={policy.k}")
    for warning in policy.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


@app.command()
def world(name: Annotated[str, typer.Argument(help="demo (the embedded world) or smollm2 (a real pretrained model)")] = "demo",
          small: Annotated[bool, typer.Option(help="the small CI variant of a real-model world")] = False,
          pairs: Annotated[int | None, typer.Option(help="SFT pairs of a real-model world (default: its recipe's; "
                                                         "trigger pairs keep their share)")] = None,
          config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Build (if needed) a world and print its build report: time, SAE L0 and explained variance."""
    import json

    if name != "demo":
        from smda_assets.cli_real import world_real

        world_real(name, small=small, config=config, warehouse=warehouse, pairs=pairs)
        return
    if pairs is not None:
        raise SMDAError("--pairs is for real-model worlds: the demo's pair count is its recipe's (demo.n_pairs in the config)")

    from smda_core.config import load_config
    from smda_core.worlds.demo.build import ensure_demo_world

    cfg = load_config(config)
    paths = ensure_demo_world(cfg.demo)
    report = json.loads(paths.report.read_text())
    sae = report["sae"]
    console.print(f"demo world {paths.root}: {report['n_parameters']:,} parameters, vocab {report['vocab_size']}, "
                  f"built in {report['seconds']['total']:.0f} s (model {report['seconds']['model']:.0f} s, SAE {report['seconds']['sae']:.0f} s)")
    console.print(f"SAE: d_sae={sae['d_sae']} k={sae['k']} L0={sae['l0']:.2f} explained variance={sae['explained_variance']:.4f} "
                  f"dead share={sae['dead_share']:.3f} on {sae['n_tokens']:,} tokens")


@app.command()
def curate(rule: Annotated[str | None, typer.Option(help="quantitative[:SCORE] | flagged | lowest:SCORE:Q | oracle | sql:\"SELECT pair_id …\"")] = None,
           config: ConfigOpt = None, warehouse: WarehouseOpt = None,
           n_random: Annotated[int | None, typer.Option(help="random removals of the same size (default: config, 5)")] = None,
           seeds: Annotated[int | None, typer.Option(help="retrainings per variant; the comparison takes means "
                                                           "(default: config, 1)")] = None) -> None:
    """Drop pairs by a rule, retrain from the base on full / curated / oracle / random removals, evaluate, store in v_curation."""
    from smda_assets.experiments import curate as run_curate
    from smda_core.store.query import query

    resource = _checked(config, warehouse)
    result = run_curate(resource, rule=rule, n_random=n_random, seeds=seeds)
    print_rows(query(resource.warehouse, "SELECT variant, seeds, n_pairs, precision, recall, f1, f1_sd, refusal_accuracy "
                     "FROM smda.v_curation WHERE experiment_id = ? ORDER BY CASE WHEN variant = 'base' THEN 0 "
                     "WHEN variant = 'full' THEN 1 WHEN variant = 'curated' THEN 2 WHEN variant LIKE 'oracle%' THEN 3 "
                     "ELSE 4 END, variant", [result.experiment_id]),
               f"curation {result.experiment_id}: rule {result.rule} (means over the retraining seeds)")
    cmp = result.comparison
    console.print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in cmp.items()))


from smda_assets.cli_real import sae_app  # noqa: E402  (smda sae train)

app.add_typer(sae_app, name="sae")

validate_app = typer.Typer(help="Does the attribution agree with retraining, and is it stable across SAE seeds?")
app.add_typer(validate_app, name="validate")


@validate_app.command("lds")
def validate_lds(subsets: Annotated[int, typer.Option(help="random subsets to fine-tune on")] = 8,
                 fraction: Annotated[float, typer.Option(help="share of the pairs in each subset")] = 0.5,
                 peer: Annotated[bool, typer.Option(help="also score dattri's TracIn (if installed) on the same subsets")] = True,
                 regime: Annotated[str, typer.Option(help="paper (AdamW, curation settings) | sgd (plain SGD at the shift's lr, "
                                                          "one pass: what the attribution models) | both")] = "paper",
                 config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Counterfactual agreement: Spearman across subsets of actual vs summed per-pair effects; stored in v_validation."""
    from smda_assets.experiments import lds

    table = lds(_checked(config, warehouse), subsets=subsets, fraction=fraction, peer=peer, regime=regime)
    print_rows(table.select(["check", "method", "score", "n", "spearman"]), "LDS")


@validate_app.command("stability")
def validate_stability(sae_seeds: Annotated[int, typer.Option(help="SAEs that differ only in seed")] = 3,
                       pairs: Annotated[int | None, typer.Option(help="first N pairs only (default: all)")] = None,
                       config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Agreement of the policy and of per-pair scores across SAE training seeds; stored in v_validation."""
    from smda_assets.experiments import stability

    table, _ = stability(_checked(config, warehouse), sae_seeds=sae_seeds, n_pairs=pairs)
    print_rows(table.select(["check", "method", "score", "n", "spearman"]), "Stability across SAE seeds (spearman = value)")


@validate_app.command("agreement")
def validate_agreement(features: Annotated[bool, typer.Option(help="also one row per policy feature for Δβ and its pathways")] = False,
                       config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """Agreement of the cheaper tier (shifts.method) with the exact tier on the validate.sample pairs (v_method_agreement).

    The rows are computed when the pairs are attributed (asset pair_attribution); run `smda ingest` with
    shifts.method=gradient (or screen) and validate.sample=N to fill them."""
    from smda_core.store.query import query

    where = "" if features else "WHERE feature_id IS NULL"
    rows = query(_warehouse(config, warehouse), "SELECT batch_id, method, reference, score, feature_id, n_pairs, spearman, "
                 f"median_rel_err FROM smda.v_method_agreement {where} ORDER BY batch_id, method, score, feature_id")
    if rows.num_rows == 0:
        raise SMDAError("v_method_agreement is empty: set shifts.method to gradient or screen and validate.sample to the "
                        "number of pairs also measured exactly, then run smda ingest")
    print_rows(rows, "agreement with the exact tier (spearman across pairs; median relative error)")


@app.command()
def separation(config: ConfigOpt = None, warehouse: WarehouseOpt = None) -> None:
    """How well each pair score separates the deliberately bad pairs from the good ones of the same prompt kind (AUC)."""
    from smda_core.attribution.separation import separation_table
    from smda_core.store.query import query

    path = _warehouse(config, warehouse)
    rows = query(path, "SELECT s.*, p.kind, p.harmful FROM smda.v_pair_summary s JOIN smda.v_sft_pairs p USING (pair_id)")
    import pyarrow as pa

    print_rows(pa.Table.from_pandas(separation_table(rows.to_pandas()), preserve_index=False), "AUC = P(score of a good pair > score of a bad pair)")


@app.command()
def explain(pair_id: Annotated[str, typer.Argument(help="the pair to explain (its pair_id)")],
            config: ConfigOpt = None, warehouse: WarehouseOpt = None,
            top: Annotated[int, typer.Option(help="features shown per explanation")] = 5) -> None:
    """One pair: its text, its scores, and the features its recommended score and its harm act through."""
    from smda_core.store.query import query

    path = _warehouse(config, warehouse)
    pair = query(path, "SELECT * FROM smda.v_sft_pairs WHERE pair_id = ?", [pair_id]).to_pylist()
    if not pair:
        raise SMDAError(f"no pair '{pair_id}' in {path}: `smda query \"SELECT pair_id FROM smda.v_sft_pairs\"` lists them")
    p = pair[0]
    console.print(f"[bold]{escape(pair_id)}[/] (batch {escape(str(p['batch_id']))}, {escape(str(p['source_file']))} line {p['line']})")
    console.print(f"  prompt:   {escape(p['prompt'])}\n  response: {escape(p['response'])}")
    console.print(f"  metadata: {escape(str(p['metadata_json']))}")
    fit = query(path, "SELECT score_name FROM smda.v_policy_fit LIMIT 1").to_pylist()
    from smda_core.attribution.score_names import DEFAULT as DEFAULT_SCORE

    score_name = fit[0]["score_name"] if fit else DEFAULT_SCORE
    cols = "score, keep_score, margin_shift, local_shift, worst_group_shift, worst_group, specific_shift, specific_group, harm_shift, screen_consistency, alignment, " \
           "correctness_shift, interference, interference_z, flagged, flagged_legacy"
    print_rows(query(path, f"SELECT {cols} FROM smda.v_pair_summary WHERE pair_id = ?", [pair_id]),
               f"scores (score = {score_name}; higher = a better pair to keep)")
    print_rows(query(path, "SELECT feature_id, label, activation_part, weight_part, share FROM smda.v_pair_mechanism "
                           "WHERE pair_id = ? AND score = ? AND source LIKE 'policy%' ORDER BY rank = 0, rank LIMIT ?",
                     [pair_id, score_name, top]), f"{score_name} through the policy's features")
    print_rows(query(path, "SELECT feature_id, label, weight_part AS part, share FROM smda.v_pair_mechanism "
                           "WHERE pair_id = ? AND score = ? AND source LIKE 'effect-fit%' ORDER BY rank = 0, rank LIMIT ?",
                     [pair_id, score_name, top]), f"{score_name} through every SAE feature (fit of its own shift pattern)")
    print_rows(query(path, "SELECT feature_id, label, weight_part AS harm, top_probe FROM smda.v_pair_mechanism "
                           "WHERE pair_id = ? AND score = 'harm' AND source = 'landing' ORDER BY rank LIMIT ?", [pair_id, top]),
               "features where its harm lands (within harmful and within harmless probes; more negative = more harm)")


@app.command()
def plot(config: ConfigOpt = None, warehouse: WarehouseOpt = None,
         out: Annotated[str | None, typer.Option("--out", help="folder for the PNGs (default: <warehouse stem>.files/plots)")] = None) -> None:
    """Draw the views: policy coefficients, refusal per category, ΔX/ΔY pathways, interference (PNG files)."""
    from smda_assets.resources import SMDAResource
    from smda_core.report.plots import write_plots

    path = _warehouse(config, warehouse)
    written = write_plots(path, out or SMDAResource(warehouse_path=str(path)).plots)
    for name, file in written.items():
        console.print(f"{name}: {file}")


@app.command()
def report(config: ConfigOpt = None, warehouse: WarehouseOpt = None,
           out: Annotated[str | None, typer.Option("--out", help="HTML file (default: <warehouse stem>.files/report.html)")] = None) -> None:
    """Write one self-contained HTML report of the warehouse (readable offline): policy, category gaps, pairs,
    mechanism, interference, tiers and validation."""
    from smda_assets.resources import SMDAResource
    from smda_core.report.html import write_report

    path = _warehouse(config, warehouse)
    written = write_report(path, out or SMDAResource(warehouse_path=str(path)).report, progress=True)
    console.print(f"report: {written.path} ({written.n_bytes / 1e6:.1f} MB, {written.n_figures} figures, "
                  f"{written.seconds:.1f} s)")


if __name__ == "__main__":
    app()
