"""`slmforge doctor [--json] [--model M ...]`: what this machine can do and what is missing.

Exit code 0 when no finding is an error (warnings included), 1 when one is, so scripts can
gate on it. The fit options only apply with --model.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from slmforge.config import validate
from slmforge.config.doctor import FitConfig
from slmforge.config.finetune import Device
from slmforge.config.finetune import Precision as TrainPrecision
from slmforge.config.methods import MethodName
from slmforge.config.precisions import OnnxPrecision
from slmforge.errors import InputError

_MARKS = {
    "ok": "[green]ok[/green]",
    "warning": "[yellow]warn[/yellow]",
    "error": "[red]error[/red]",
}


def _help(field: str) -> str:
    info = FitConfig.model_fields[field]
    default = None if info.is_required() else info.get_default()
    shown = f" (default: {default})" if default not in (None, False) else ""
    return f"Fit check: {info.description}{shown}"


def _fit_config(values: dict[str, Any]) -> FitConfig | None:
    given = {key: value for key, value in values.items() if value is not None}
    if "model" not in given:
        if given:
            flags = ", ".join("--" + key.replace("_", "-") for key in given)
            raise InputError(f"{flags}: fit check options need --model MODEL_OR_FOLDER")
        return None
    return validate(FitConfig, given, option_keys=set(given))


def _render(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for item in report.checks:
        finding = Text(item.summary)
        if item.fix:
            finding.append(f"\nfix: {item.fix}", style="cyan")
        table.add_row(_MARKS[item.status], item.id, finding)
    console = Console()
    console.print(table)
    counts = {s: sum(c.status == s for c in report.checks) for s in ("ok", "warning", "error")}
    console.print(
        f"{counts['ok']} ok, {counts['warning']} warnings, {counts['error']} errors",
        highlight=False,
    )


def doctor(
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as JSON (schema in docs/setup.md)."
    ),
    model: str | None = typer.Option(None, "--model", help=_help("model")),
    method: MethodName | None = typer.Option(None, "--method", help=_help("method")),
    precision: OnnxPrecision | None = typer.Option(None, "--precision", help=_help("precision")),
    train_precision: TrainPrecision | None = typer.Option(
        None, "--train-precision", help=_help("train_precision")
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help=_help("batch_size")),
    max_seq_len: int | None = typer.Option(None, "--max-seq-len", help=_help("max_seq_len")),
    lora_r: int | None = typer.Option(None, "--lora-r", help=_help("lora_r")),
    gradient_checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing", help=_help("gradient_checkpointing")
    ),
    device: Device | None = typer.Option(None, "--device", help=_help("device")),
    trust_remote_code: bool | None = typer.Option(
        None, "--trust-remote-code", help=_help("trust_remote_code")
    ),
) -> None:
    """Check this machine: Python, OS, CPU, memory, GPUs, torch and ONNX Runtime builds,
    missing extras (with the install command), disk, model cache, chromium, cloud profiles;
    with --model, whether fine-tuning, merge, optimize and inference (chat, serve, eval) of
    that model fit in memory."""
    from slmforge.doctor import diagnose

    fit = _fit_config(
        {
            "model": model,
            "method": method,
            "precision": precision,
            "train_precision": train_precision,
            "batch_size": batch_size,
            "max_seq_len": max_seq_len,
            "lora_r": lora_r,
            "gradient_checkpointing": gradient_checkpointing,
            "device": device,
            "trust_remote_code": trust_remote_code,
        }
    )
    report = diagnose(fit)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _render(report)
    if report.status == "error":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
