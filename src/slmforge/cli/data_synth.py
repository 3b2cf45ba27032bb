"""`slmforge data synth`: new prompt/response examples from a teacher model, or preference
pairs from a teacher and a student (`--pairs`)."""

from __future__ import annotations

from typing import Any

import typer

from slmforge.cli.options import model_command
from slmforge.config.data import SynthConfig
from slmforge.data.synth import SynthResult, synthesize


def _table(rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data synth", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths are long; fold them rather than cut them
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v)
    return f"{total} ({reasons})" if total else "0"


def _summary(result: SynthResult) -> None:
    _table(
        [
            ("output", str(result.out)),
            ("rows", f"{result.rows}/{result.count}"),
            ("added this run", str(result.added)),
            ("requests", f"{result.requests} this run, {result.total_requests} in all"),
            ("dropped", _counts(result.dropped)),
            ("state", str(result.state_path)),
        ]
    )
    if not result.complete:
        typer.echo(
            f"incomplete: rerun with --resume to write the remaining "
            f"{result.count - result.rows} rows",
            err=True,
        )


def _pairs_summary(result: Any) -> None:
    _table(
        [
            ("output", str(result.out)),
            ("pairs", str(result.rows)),
            ("added this run", str(result.added)),
            ("prompts", f"{result.done}/{result.prompts} done"),
            ("requests this run", str(result.requests)),
            ("skipped prompts", _counts(result.skipped)),
            ("state", str(result.state_path)),
        ]
    )
    if not result.complete:
        typer.echo(
            f"incomplete: rerun with --resume to answer the remaining "
            f"{result.prompts - result.done} prompts",
            err=True,
        )


def register(data_app: typer.Typer) -> None:
    @model_command(data_app, "synth", SynthConfig, arguments=("seed_data",), config_file=True)
    def synth(cfg: SynthConfig) -> None:
        """Write new examples with a teacher model (openai:MODEL@URL, profile:NAME or a model
        folder) shown seed examples; with --pairs, preference pairs: the teacher's answer to
        each prompt of --prompts preferred, the --student's not. --resume continues an
        interrupted run."""
        if cfg.pairs:
            from slmforge.data.synth_pairs import synthesize_pairs

            _pairs_summary(synthesize_pairs(cfg))
            return
        _summary(synthesize(cfg))
