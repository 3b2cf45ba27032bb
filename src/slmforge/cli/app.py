"""`slmforge app`: the web app with a local and a cloud model side by side, routing between
them; `slmforge app compare` is the batch version (`cli/app_compare.py`)."""

from __future__ import annotations

import typer

from slmforge.cli.options import model_group_callback
from slmforge.config.app import AppConfig

# its help is `run`'s docstring: `slmforge app` itself opens the web app
app_group = typer.Typer(no_args_is_help=False)


@model_group_callback(app_group, AppConfig)
def run(cfg: AppConfig) -> None:
    """Open the web app: two panes (local, cloud) streaming side by side with time to first
    token and tokens/s, or one pane routed by a policy (local, cloud, local-first, cost);
    adapters, system prompt, sampling, per-tab history, export, similarity and judge."""
    from slmforge.app.server import run_app

    run_app(cfg)


def _add_compare() -> None:
    try:
        from slmforge.cli.app_compare import compare
    except ModuleNotFoundError as exc:  # the batch command is built separately
        if exc.name != "slmforge.cli.app_compare":
            raise
        return
    app_group.command("compare")(compare)


_add_compare()


def register(app: typer.Typer) -> None:
    app.add_typer(app_group, name="app")
