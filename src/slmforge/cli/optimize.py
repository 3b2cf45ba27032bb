"""`slmforge optimize`: a Hugging Face model (+ LoRA adapters) -> a verified ONNX model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from slmforge.cli.options import model_command
from slmforge.config.optimize import OptimizeConfig


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} kB"


def _summary(out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from slmforge.artifacts import read_manifest

    manifest = read_manifest(out)
    if manifest is None:
        return
    if manifest.kind == "optimize_compare":
        _ladder(out)
        return
    m, details = manifest.metrics, manifest.details
    kind = details.get("format", "onnx")
    where = details.get("device", "llama.cpp")
    table = Table(title=f"{details['precision']} {kind.upper()} model ({where}): {out}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("size before (safetensors)", _size(m["size_before_bytes"]))
    table.add_row(f"size after ({kind})", _size(m["size_after_bytes"]))
    table.add_row("ratio", f"{m['size_ratio']:.3f}" if m["size_ratio"] else "-")
    table.add_row("build time", f"{m['build_s']:.1f} s")
    console = Console()
    console.print(table)
    if m.get("parity"):
        parity = Table(title="parity with PyTorch")
        columns = (
            "variant",
            "prompts",
            "mean KL",
            "confident agreement",
            "agreement",
            "max logit diff",
            "greedy match",
        )
        for column in columns:
            parity.add_column(column, justify="right" if column != "variant" else "left")
        for label, p in m["parity"].items():
            parity.add_row(
                label,
                str(p["prompts"]),
                f"{p['kl']:.3g}",
                f"{p['confident_agreement']:.1%} of {p['confident_positions']}",
                f"{p['agreement']:.1%}",
                f"{p['max_logit_diff']:.3g}",
                f"{p['greedy_match']:.0%}",
            )
        console.print(parity)
    for name, adapter in details.get("adapters", {}).items():
        targets = ", ".join(adapter["target_modules"])
        console.print(
            f"adapter [bold]{name}[/bold]: {adapter['file']} (r={adapter['rank']}, {targets})"
        )


def _ladder(out: Path) -> None:
    """The quality ladder of `--compare`, as compare.md has it."""
    from rich.console import Console
    from rich.table import Table

    from slmforge.optimize.compare import COLUMNS, read_report, table_row, variants_of

    report = read_report(out)
    table = Table(title=f"quality ladder: {out} ({report['rows']} rows of {report['eval_data']})")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant in variants_of(report):
        table.add_row(*table_row(variant))
    console = Console()
    console.print(table)
    console.print(f"report: {out / 'compare.md'}")


def register(app: typer.Typer) -> None:
    @model_command(app, "optimize", OptimizeConfig, config_file=True)
    def optimize(cfg: OptimizeConfig) -> None:
        """Build an ONNX Runtime GenAI model (fp32/fp16/int8/int4), with switchable LoRA adapters,
        verified against PyTorch before it is kept; or, with --compare, a quality ladder of
        variants measured on --eval-data."""
        from slmforge.optimize.run import optimize as run_optimize

        _summary(run_optimize(cfg))
