"""`smda sae train` and `smda world smollm2`: thin commands over smda_core.sae_training and smda_core.real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from smda_assets.display import console, print_rows

sae_app = typer.Typer(help="Sparse autoencoders: train one on a model's residual stream.", no_args_is_help=True)


def _materialize(config_path: str, warehouse_path: str) -> None:
    import dagster as dg

    from smda_assets.run import materialize_all

    materialize_all(config_path, warehouse_path, instance=dg.DagsterInstance.ephemeral())


def world_real(name: str, *, small: bool, config: str | None, warehouse: str | None, pairs: int | None = None) -> None:
    """Build (cached step by step) a real-model world and materialise its warehouse."""
    import yaml

    from smda_core.worlds.real.build import build_real_world
    from smda_core.worlds.real.figures import world_figures

    overrides = yaml.safe_load(Path(config).read_text()) if config else None
    report = build_real_world(name, small=small, warehouse=warehouse, overrides=overrides, materialize=_materialize,
                              n_pairs=pairs)
    s = report["sae_report"]
    console.print(f"world {report['world']}: config {report['config']}, warehouse {report['warehouse']}")
    print_rows([{"step": k, **v} for k, v in report["steps"].items()], f"build steps ({report['seconds_total']:.0f} s in all)", float_format=".3f")
    console.print(f"SAE {s['architecture']} d_sae={s['d_sae']} k={s['k']} at {s['hook_name']}: L0 {s['l0']:.1f}, "
                  f"explained variance {s['explained_variance']:.3f}, dead {s['dead_share']:.1%} "
                  f"({s['n_tokens_train']:,} training tokens, {s['n_tokens_eval']:,} held out)")
    fig = world_figures(report["warehouse"])
    fit = fig["policy_fit"] or {}
    console.print(f"refusal_prob: harmful {fig['mean_refusal_harmful']:.3f}, harmless {fig['mean_refusal_harmless']:.3f} "
                  f"(gap {fig['refusal_gap']:.3f}); lowest harmful category: {fig['lowest_harmful_category']}")
    console.print(f"policy: k={fit.get('k')}, λ={fit.get('lambda', 0):.3g}, R² {fit.get('r2', 0):.3f}, LOO R² {fit.get('loo_r2', 0):.3f}, "
                  f"held-out accuracy {fit.get('accuracy', 0):.3f} vs majority {fit.get('majority_baseline', 0):.3f}")
    console.print(f"[bold]{escape(str(fit.get('formula')))}[/]")  # labels are in [brackets]: not rich markup
    print_rows(fig["categories"], "category gaps", float_format=".3f")
    console.print(f"linear vs refit: {json.dumps(fig['linear_vs_refit'])}")
    print_rows(fig["separation"], "bad-pair AUC (P(score of a good pair > score of a bad pair))", float_format=".3f")
    Path(report["config"]).with_name("figures.json").write_text(json.dumps(fig, indent=2, default=str))
    from smda_assets.resources import SMDAResource

    console.print(f"figures: {SMDAResource(warehouse_path=report['warehouse']).plots}/*.png")


@sae_app.command("train")
def sae_train(config: Annotated[str | None, typer.Option("--config", "-c", help="smda.yaml: model + sae_training section (default: the demo)")] = None,
              corpus: Annotated[list[str] | None, typer.Option("--corpus", help="JSONL of prompt+response (or text) rows; repeatable")] = None,
              layer: Annotated[int | None, typer.Option(help="block L (resid_post)")] = None,
              architecture: Annotated[str | None, typer.Option(help="topk | batchtopk | standard")] = None,
              d_sae: Annotated[int | None, typer.Option(help="number of SAE features")] = None,
              k: Annotated[int | None, typer.Option(help="active features per token")] = None,
              tokens: Annotated[int | None, typer.Option(help="activation tokens for training")] = None,
              steps: Annotated[int | None, typer.Option(help="optimiser steps")] = None,
              out: Annotated[str | None, typer.Option(help="also copy the trained SAE to this folder")] = None) -> None:
    """Train (or reuse, by hash of model, corpus and settings) a sae-lens SAE; prints L0, explained variance, dead share."""
    import shutil

    from smda_core.config import load_config
    from smda_core.api import train_sae

    given = {"corpus": corpus, "hook_layer": layer, "architecture": architecture, "d_sae": d_sae, "k": k,
             "n_tokens": tokens, "steps": steps}
    cfg = load_config(config, sae_training={k_: (tuple(v) if isinstance(v, list) else v) for k_, v in given.items() if v is not None})
    path, report = train_sae(cfg)
    from smda_core.model.sae_training import short_corpus_warning

    short = short_corpus_warning(report, cfg.sae_training.n_tokens)
    if short:
        console.print(f"[yellow]warning:[/] {escape(short)}", soft_wrap=True)
    if out:
        shutil.copytree(path, out, dirs_exist_ok=True)
    console.print(f"SAE at {out or path} ({report['architecture']}, d_sae={report['d_sae']}, {report['hook_name']}): "
                  f"L0 {report['l0']:.1f}, explained variance {report['explained_variance']:.3f}, "
                  f"dead {report['dead_share']:.1%}, {report['n_tokens_train']:,} training tokens")
