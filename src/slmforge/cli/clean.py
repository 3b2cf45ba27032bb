"""`slmforge clean RUN_ID|--all`: delete exactly what workflow runs created."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from slmforge.errors import InputError


def register(app: typer.Typer) -> None:
    @app.command("clean")
    def clean(
        run_id: str | None = typer.Argument(None, help="Run to clean (see RUNS_DIR/<id>)."),
        all_runs: bool = typer.Option(False, "--all", help="Clean every recorded run."),
        runs_dir: Path = typer.Option(
            Path("runs"),
            "--runs-dir",
            help="Folder of run records: the workflow's runs_dir (default: runs).",
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="List what would go; delete nothing."
        ),
        yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    ) -> None:
        """Stop the deployments and delete the files and folders that a run (or every run)
        created, and its record; never anything a run did not create."""
        from rich.console import Console

        from slmforge.pipeline.clean import apply_clean, plan_clean

        console = Console(highlight=False, soft_wrap=True)
        plan = plan_clean(runs_dir, run_id, all_runs)
        for name in plan.deployments:
            console.print(f"stop deployment {name}", markup=False)
        for path in plan.paths:
            console.print(f"delete {path}", markup=False)
        for folder in plan.records:
            console.print(f"delete record {folder}", markup=False)
        summary = (
            f"{len(plan.runs)} run(s): {len(plan.paths)} path(s), "
            f"{len(plan.deployments)} deployment(s)"
        )
        if dry_run:
            console.print(f"{summary} would be removed (dry run)", markup=False)
            return
        if not yes:
            if not sys.stdin.isatty():
                raise InputError("clean deletes files: pass --yes to confirm without a terminal")
            typer.confirm(f"Remove {summary}?", abort=True)
        apply_clean(plan)
        console.print(f"removed {summary}", markup=False)
