"""`slmforge models tiny|init|info`: build offline models of real architectures and real
shapes, describe a model."""

from __future__ import annotations

import json
from typing import Any

import typer

from slmforge.cli.options import model_command
from slmforge.config.models import InitModelConfig, TinyModelConfig

models_app = typer.Typer(help="Build tiny models and inspect models.", no_args_is_help=True)


@model_command(models_app, "tiny", TinyModelConfig)
def tiny(config: TinyModelConfig) -> None:
    """Build a small pretrained model of a real architecture with its own tokenizer, offline."""
    from slmforge.models.tiny import build

    out = build(
        config.arch,
        config.out,
        size=config.size,
        pretrain_steps=config.pretrain_steps,
        seed=config.seed,
        force=config.force,
    )
    typer.echo(str(out))


@model_command(models_app, "init", InitModelConfig)
def init(config: InitModelConfig) -> None:
    """Write a random model with a real model's exact shape (weights random: for memory, speed
    and dry runs, never for quality)."""
    from slmforge.models.real_shape import init_like

    out = init_like(
        config.like,
        config.out,
        layers=config.layers,
        dtype=config.dtype,
        seed=config.seed,
        force=config.force,
    )
    typer.echo(str(out))


def _format_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "parameters":
        return f"{value:,}"
    if isinstance(value, list):
        return " ".join(value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@models_app.command("info")
def info(
    path: str = typer.Argument(help="Model folder or hub id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Describe a model (architecture, size, context, chat template, stops) without loading it."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from slmforge.models.load import model_info

    details = model_info(path)
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in details.items():
        table.add_row(Text(key.replace("_", " ")), Text(_format_value(key, value)))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
