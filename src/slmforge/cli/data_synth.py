"""`slmforge data synth`: new prompt/response examples from a teacher model."""

from __future__ import annotations

import typer

from slmforge.cli.options import model_command
from slmforge.config.data import SynthConfig
from slmforge.data.synth import SynthResult, synthesize


def _summary(result: SynthResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data synth", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths are long; fold them rather than cut them
    table.add_row("output", str(result.out))
    table.add_row("rows", f"{result.rows}/{result.count}")
    table.add_row("added this run", str(result.added))
    table.add_row("requests", f"{result.requests} this run, {result.total_requests} in all")
    dropped = sum(result.dropped.values())
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.dropped.items()) if v)
    table.add_row("dropped", f"{dropped} ({reasons})" if dropped else "0")
    table.add_row("state", str(result.state_path))
    Console().print(table)
    if not result.complete:
        typer.echo(
            f"incomplete: rerun with --resume to write the remaining "
            f"{result.count - result.rows} rows",
            err=True,
        )


def register(data_app: typer.Typer) -> None:
    @model_command(data_app, "synth", SynthConfig, arguments=("seed_data",), config_file=True)
    def synth(cfg: SynthConfig) -> None:
        """Write new examples with a teacher model (openai:MODEL@URL, profile:NAME or a model
        folder) shown seed examples; --resume continues an interrupted run."""
        _summary(synthesize(cfg))
