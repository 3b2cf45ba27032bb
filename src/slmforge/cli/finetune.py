"""`slmforge finetune` and `slmforge merge`."""

from __future__ import annotations

from pathlib import Path

import typer

from slmforge.cli.options import model_command
from slmforge.config.finetune import FinetuneConfig, MergeConfig


def _summary(out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from slmforge.artifacts import read_manifest

    manifest = read_manifest(out)
    if manifest is None:
        return
    table = Table(title=f"{manifest.kind}: {out}", show_header=False)
    for key, value in manifest.metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console()
    console.print(table)
    for sample in manifest.details.get("samples", []):
        console.print(f"[bold]Q:[/bold] {sample['prompt']}\n[bold]A:[/bold] {sample['output']}\n")


def register(app: typer.Typer) -> None:
    @model_command(app, "finetune", FinetuneConfig, config_file=True)
    def finetune(cfg: FinetuneConfig) -> None:
        """Fine-tune a causal LM (LoRA, QLoRA, DoRA, full) with SFT or DPO/ORPO/SimPO pairs."""
        from slmforge.train.run import run_finetune

        out = run_finetune(cfg)
        if out is not None:
            _summary(out)

    @model_command(app, "merge", MergeConfig)
    def merge(cfg: MergeConfig) -> None:
        """Merge an adapter into its base model and write a full model folder."""
        from slmforge.train.run import run_merge

        run_merge(cfg)
