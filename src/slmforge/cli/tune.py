"""`slmforge tune`: hyperparameter search over fine-tuning options."""

from __future__ import annotations

import typer

from slmforge.cli.options import model_command
from slmforge.config.tune import TuneConfig


def _summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tune: {result.out}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    counts = result.counts
    table.add_row(
        "trials",
        f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed",
    )
    table.add_row("best trial", f"{result.best_trial}: {result.objective} {result.best_value:.4f}")
    for name, value in result.best_params.items():
        table.add_row(f"  {name}", f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("best config", str(result.best_yaml))
    table.add_row("best adapter", str(result.best_adapter))
    table.add_row("report", str(result.out / "report.md"))
    Console().print(table)


def register(app: typer.Typer) -> None:
    @model_command(app, "tune", TuneConfig, config_file=True)
    def tune(cfg: TuneConfig) -> None:
        """Search fine-tuning options (learning rate, LoRA r/alpha/dropout, steps, ...) with
        Optuna or Ray Tune; prunes bad trials, resumes with --resume, writes best.yaml."""
        from slmforge.tune.run import tune as run_tune

        _summary(run_tune(cfg))
