"""`smda sae train` and `smda world smollm2`: SAE training and the real-model world (being built)."""

from __future__ import annotations

import typer

sae_app = typer.Typer(help="Sparse autoencoders: train one on a model's residual stream.", no_args_is_help=True)


def world_real(name: str, *, small: bool, config: str | None, warehouse: str | None) -> None:
    """Build (cached step by step) a real-model world and materialise its warehouse."""
    raise typer.BadParameter(f"world '{name}': not available yet")
