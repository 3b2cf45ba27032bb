"""`slmforge app compare`: the same prompts through a local and a cloud model; the side-by-side
table, speed statistics and the eval report of both (`slmforge.app.batch`).

`compare` is the typer command function (options generated from `AppCompareConfig`); the
`slmforge app` group registers it as `app.command("compare")(compare)`.
"""

from __future__ import annotations

from typing import Any

from slmforge.cli.options import model_function
from slmforge.config.app_compare import AppCompareConfig


def _print_summary(summary: dict[str, Any], out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from slmforge.app.compare_report import SIDES, SPEED_ROWS, STATS, agreement
    from slmforge.evaluate.report import fmt

    table = Table(title=f"speed on {summary['rows']} prompts")
    for k, column in enumerate(("figure", *SIDES, "local / cloud")):
        table.add_column(column, justify="left" if k == 0 else "right")
    for key, (label, unit) in SPEED_ROWS.items():
        figures = summary["speed"][key]
        for stat in STATS:
            ratio = figures["local_over_cloud"][stat]
            cells = [fmt(figures[side][stat], unit) for side in SIDES]
            table.add_row(f"{label} {stat}", *cells, "n/a" if ratio is None else f"{ratio:.2f}x")
    console = Console()
    console.print(table)
    for line in agreement(summary):
        console.print(line.removeprefix("- "), highlight=False, markup=False, soft_wrap=True)
    report = f"report: {out}/compare.md, {out}/eval/report.html"
    console.print(report, highlight=False, markup=False, soft_wrap=True)


def _compare(cfg: AppCompareConfig) -> None:
    """Send every prompt of a data set to a local and a cloud model; write the answers side
    by side with their similarity (and, with --judge, the judge's preference), speed per side
    (time to first token, tokens/s: mean, p50, p95) and the eval report of both."""
    from slmforge.app.batch import run_compare

    result = run_compare(cfg)
    _print_summary(result.summary, str(result.out))


compare = model_function(AppCompareConfig, _compare, config_file=True)
