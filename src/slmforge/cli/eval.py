"""`slmforge eval`: score one or more targets on a data set; report, compare and gate for CI."""

from __future__ import annotations

from typing import Any

import typer

from slmforge.cli.options import model_command
from slmforge.config.evaluate import EvalConfig


def _print_summary(summary: dict[str, Any], out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from slmforge.evaluate.report import finding_text, gate_table, performance_table, quality_table

    console = Console()
    for title, (header, rows) in (
        (f"quality on {summary['rows']} rows (mean [95% CI])", quality_table(summary)),
        ("performance", performance_table(summary)),
    ):
        table = Table(title=title)
        for k, column in enumerate(header):
            table.add_column(column, justify="left" if k == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for finding in summary["findings"]:
        unit = summary["metrics"][finding["metric"]]["unit"]
        console.print(finding_text(finding, unit), highlight=False)
    header, rows = gate_table(summary)
    for row in rows:
        style = "green" if row[-1] == "pass" else "bold red"
        console.print(f"gate {row[0]} {row[1]}: {row[2]} [{style}]{row[3]}[/{style}]")
    console.print(f"report: {out}/report.html, {out}/report.md", highlight=False)


def register(app: typer.Typer) -> None:
    @model_command(app, "eval", EvalConfig, config_file=True)
    def evaluate(cfg: EvalConfig) -> None:
        """Run a data set through one or more targets (model folders, ONNX folders, adapters,
        deployments, OpenAI-compatible endpoints); score with reference metrics and an
        LLM judge; write rows.jsonl, summary.json, report.html and report.md. Gates from
        --fail-under/--fail-over exit 1 when missed."""
        from slmforge.evaluate.runner import run_eval
        from slmforge.evaluate.summary import check_gates

        result = run_eval(cfg)
        _print_summary(result.summary, str(result.out))
        check_gates(result.summary, result.out)
