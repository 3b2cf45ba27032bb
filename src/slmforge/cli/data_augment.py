"""`slmforge data augment`: new rows from existing ones (noise, paraphrase, back-translation,
multi-turn), each recording its origin."""

from __future__ import annotations

import typer

from slmforge.cli.options import model_command
from slmforge.config.data import AugmentConfig
from slmforge.data.augment import AugmentResult, augment


def _summary(result: AugmentResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data augment", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("output", str(result.out))
    table.add_row("originals", str(result.originals))
    table.add_row("rows", f"{result.rows} ({result.added} added this run)")
    table.add_row("units", f"{result.units_done}/{result.units}")
    table.add_row("requests", str(result.requests))
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.dropped.items()) if v)
    table.add_row("dropped", reasons or "0")
    Console().print(table)
    if not result.complete:
        typer.echo("incomplete: rerun with --resume to finish the remaining units", err=True)


def register(data_app: typer.Typer) -> None:
    @model_command(data_app, "augment", AugmentConfig, arguments=("input",), config_file=True)
    def augment_command(cfg: AugmentConfig) -> None:
        """Add noisy, paraphrased, back-translated or multi-turn variants of each row (with
        meta.augmented_from); --resume continues an interrupted run."""
        _summary(augment(cfg))
