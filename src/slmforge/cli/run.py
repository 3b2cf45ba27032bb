"""`slmforge run WORKFLOW.yaml`: the whole journey from one file, cached and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from slmforge.pipeline.graph import StagePlan


def _plan_table(steps: list[StagePlan], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in ("stage", "kind", "action", "why", "output"):
        table.add_column(column)
    colors = {"run": "yellow", "cached": "green"}
    for step in steps:
        action = f"[{colors[step.action]}]{step.action}[/{colors[step.action]}]"
        table.add_row(step.name, step.kind, action, step.reason, str(step.output or "-"))
    return table


def _show_plan(console: Console, steps: list[StagePlan], title: str) -> None:
    """A table in a terminal; one greppable line per stage otherwise."""
    if console.is_terminal:
        console.print(_plan_table(steps, title))
        return
    console.print(title, markup=False)
    for step in steps:
        output = f" -> {step.output}" if step.output is not None else ""
        console.print(
            f"{step.name} ({step.kind}): {step.action}, {step.reason}{output}", markup=False
        )


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        workflow: Path = typer.Argument(help="Workflow YAML (docs/workflows.md)."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the plan (what runs, what is cached, why); run nothing."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a value: stages.finetune.max_steps=50 (repeat)."
        ),
        force: list[str] = typer.Option(
            [], "--force", help="Rerun this stage and every stage after it that needs it (repeat)."
        ),
    ) -> None:
        """Run a workflow: stages skip when their config and inputs are unchanged, a failed
        stage stops the run, and running again continues from it. Records what it created in
        RUNS_DIR/<id>/run.json for `slmforge clean`."""
        from rich.console import Console

        from slmforge.pipeline.figures import workflow_figures
        from slmforge.pipeline.graph import plan_workflow
        from slmforge.pipeline.record import load_records
        from slmforge.pipeline.runner import run_workflow
        from slmforge.pipeline.workflow import load_workflow

        console = Console(highlight=False, soft_wrap=True)
        flow = load_workflow(workflow, set_)
        if dry_run:
            steps = plan_workflow(flow, load_records(flow.runs_dir), set(force))
            _show_plan(console, steps, f"plan: {workflow}")
            running = sum(step.action == "run" for step in steps)
            console.print(f"{running} to run, {len(steps) - running} cached (dry run)")
            return
        result = run_workflow(flow, set(force))
        ran = [name for name, s in result.record.stages.items() if s.status == "done"]
        cached = [name for name, s in result.record.stages.items() if s.status == "cached"]
        _show_plan(console, result.plan, f"run {result.record.id}: {workflow}")
        for name, lines in workflow_figures(flow).items():
            for line in lines:
                console.print(f"{name}: {line}", markup=False)
        console.print(
            f"ran {len(ran)}, cached {len(cached)}; record: {result.record_path}; "
            f"clean up with: slmforge clean {result.record.id} --runs-dir {flow.runs_dir}"
        )
